//! The Helm chart `charts/trialbridge`, rendered by the real Helm template engine
//! (helm-python-sdk, Helm's Go SDK) for the default values and for
//! `ci/production-values.yaml`; every manifest validated against the Kubernetes schemas
//! (kubernetes-validate, strict). The values schema refuses a misspelt key, a negative replica
//! count and a credential in clear. Driven through `integration-tests/python/chart_check.py`.

use serde_json::{json, Value};

use integration_tests::repo_root;

fn python() -> String {
    std::env::var("TRIALBRIDGE_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Renders and validates; returns the checker's report.
fn check(values_files: &[&str], cases: &[Value]) -> Value {
    let root = repo_root();
    let mut cmd = std::process::Command::new(python());
    cmd.arg(root.join("integration-tests/python/chart_check.py"))
        .arg(root.join("charts/trialbridge"));
    for f in values_files {
        if *f == "-" {
            cmd.arg("-");
        } else {
            cmd.arg(root.join("charts/trialbridge").join(f));
        }
    }
    for c in cases {
        cmd.arg("--values-case").arg(c.to_string());
    }
    let out = cmd.output().expect("run chart_check.py");
    assert!(
        out.status.success(),
        "chart_check.py failed (run `bash scripts/test.sh` to create the test venv): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("chart_check.py prints JSON")
}

fn kinds(render: &Value) -> Vec<(String, String)> {
    render["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap().to_string(),
                d["metadata"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The value of environment variable `var` in the first container of Deployment `deployment`.
fn env_value(render: &Value, deployment: &str, var: &str) -> Option<Value> {
    let d = render["documents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == deployment)
        .unwrap_or_else(|| panic!("no Deployment {deployment}"));
    d["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == var)
        .map(|e| e["value"].clone())
}

fn containers(render: &Value) -> Vec<&Value> {
    render["documents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["kind"] == "Deployment")
        .flat_map(|d| {
            d["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
        })
        .collect()
}

#[test]
fn the_chart_renders_and_every_manifest_validates() {
    let report = check(&["-", "ci/production-values.yaml"], &[]);
    assert_eq!(
        report["lint"]["errors"],
        json!([]),
        "helm lint: {}",
        report["lint"]
    );
    // The validator refuses a broken Deployment, so its verdicts below mean something.
    assert_eq!(report["broken"]["ok"], false);
    let renders = report["renders"].as_array().unwrap();
    assert_eq!(renders.len(), 2);
    for r in renders {
        for v in r["validation"].as_array().unwrap() {
            assert_eq!(v["ok"], true, "{}: {v}", r["values"]);
        }
        for c in containers(r) {
            let sc = &c["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{}", c["name"]);
            assert_eq!(sc["runAsNonRoot"], true, "{}", c["name"]);
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{}", c["name"]);
            // Credentials come from Secrets only.
            for e in c["env"].as_array().unwrap() {
                let name = e["name"].as_str().unwrap();
                if name.ends_with("DATABASE_URL")
                    || name.ends_with("WAREHOUSE_URL")
                    || name.ends_with("TOKEN")
                    || name.ends_with("SECRET")
                {
                    assert!(
                        e["valueFrom"]["secretKeyRef"].is_object(),
                        "{name} must come from a Secret: {e}"
                    );
                }
            }
            let probes = (&c["livenessProbe"], &c["readinessProbe"]);
            assert_eq!(probes.0["httpGet"]["path"], "/livez", "{}", c["name"]);
            assert_eq!(probes.1["httpGet"]["path"], "/readyz", "{}", c["name"]);
        }
    }
    // The read cache: 64 MiB by default, as set otherwise.
    for (render, want) in [(&renders[0], "64"), (&renders[1], "256")] {
        let cache = env_value(render, "mc-trialbridge-store", "TRIALBRIDGE_READ_CACHE_MB");
        assert_eq!(cache, Some(json!(want)), "{}", render["values"]);
    }
    // Defaults: the store alone, autoscaled, with a disruption budget and a network policy.
    let default_kinds = kinds(&renders[0]);
    for (kind, name) in [
        ("Deployment", "mc-trialbridge-store"),
        ("Service", "mc-trialbridge-store"),
        ("HorizontalPodAutoscaler", "mc-trialbridge-store"),
        ("PodDisruptionBudget", "mc-trialbridge-store"),
        ("NetworkPolicy", "mc-trialbridge-store"),
    ] {
        assert!(
            default_kinds.contains(&(kind.to_string(), name.to_string())),
            "{kind} {name} in {default_kinds:?}"
        );
    }
    assert!(!default_kinds.iter().any(|(_, n)| n.contains("gateway")));
    // Production: all three services.
    let prod = &renders[1];
    let prod_kinds = kinds(prod);
    for d in ["store", "gateway", "sync"] {
        assert!(
            prod_kinds.contains(&("Deployment".into(), format!("mc-trialbridge-{d}"))),
            "{d}: {prod_kinds:?}"
        );
        assert!(prod_kinds.contains(&("NetworkPolicy".into(), format!("mc-trialbridge-{d}"))));
    }
    // The gateway reaches only the store pods, DNS and what extraEgress names.
    let gw_policy = prod["documents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "NetworkPolicy" && d["metadata"]["name"] == "mc-trialbridge-gateway")
        .unwrap();
    let egress = gw_policy["spec"]["egress"].as_array().unwrap();
    assert_eq!(
        egress[0]["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "trial-store"
    );
    assert_eq!(
        egress.len(),
        4,
        "store, the token issuer, DNS, and the one extraEgress rule: {egress:?}"
    );
    // Its HTTP API (key list, dead letters) is open to the named clients only.
    let ingress = gw_policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 2, "{ingress:?}");
    assert_eq!(
        ingress[1]["from"],
        json!([{"ipBlock": {"cidr": "10.20.40.0/24"}}])
    );
    assert_eq!(ingress[1]["ports"][0]["port"], 8081);
    let var = |name: &str| env_value(prod, "mc-trialbridge-gateway", name);
    assert_eq!(var("TRIALBRIDGE_PROFILE"), Some(json!("production")));
    assert!(var("TRIALBRIDGE_AUTH_JWKS").is_some());
    let hosts = var("TRIALBRIDGE_GATEWAY_HOSTS").unwrap();
    assert!(
        hosts
            .as_str()
            .unwrap()
            .starts_with("mc-trialbridge-gateway:8081,")
            && hosts
                .as_str()
                .unwrap()
                .ends_with(",gateway.klinikum.example:443"),
        "{hosts}"
    );
    let store_policy = prod["documents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "NetworkPolicy" && d["metadata"]["name"] == "mc-trialbridge-store")
        .unwrap();
    assert_eq!(
        store_policy["spec"]["egress"][0]["to"][0]["podSelector"]["matchLabels"]["app"],
        "postgres"
    );
}

#[test]
fn the_values_schema_refuses_bad_values() {
    let cases = [
        json!({}),
        json!({"store": {"replicsa": 3}}),
        json!({"store": {"replicas": -1}}),
        json!({"gateway": {"replicas": -2}}),
        json!({"store": {"database": {"url": "postgres://trial:secret@db/trial"}}}),
        json!({"podSecurityContext": {"runAsNonRoot": false}}),
        json!({"gateway": {"site": "Klinikum"}}),
        json!({"store": {"replicas": 3, "autoscaling": {"maxReplicas": 8}}}),
    ];
    let report = check(&[], &cases);
    let verdicts: Vec<(bool, String)> = report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["accepted"].as_bool().unwrap(),
                c["error"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        verdicts[0].0,
        "the defaults are accepted: {}",
        verdicts[0].1
    );
    assert!(
        !verdicts[1].0 && verdicts[1].1.contains("replicsa"),
        "{:?}",
        verdicts[1]
    );
    assert!(
        !verdicts[2].0 && verdicts[2].1.contains("/store/replicas"),
        "{:?}",
        verdicts[2]
    );
    assert!(
        !verdicts[3].0 && verdicts[3].1.contains("/gateway/replicas"),
        "{:?}",
        verdicts[3]
    );
    assert!(
        !verdicts[4].0 && verdicts[4].1.contains("url"),
        "{:?}",
        verdicts[4]
    );
    assert!(!verdicts[5].0, "root is refused: {:?}", verdicts[5]);
    assert!(
        !verdicts[6].0 && verdicts[6].1.contains("/gateway/site"),
        "{:?}",
        verdicts[6]
    );
    assert!(verdicts[7].0, "{}", verdicts[7].1);
}
