//! Search per parameter type and modifier. Expected results are computed by plain filters over
//! the fixture JSON in this file, not by the server's index code.

use std::collections::BTreeSet;

use integration_tests::{
    client, fixture, get_json, next_link, put_fhir, TestStore, INVALID_EXAMPLE,
};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The fixtures: the official examples plus resources written for the cases the examples lack.
fn fixtures() -> Vec<Value> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(fixture("r4-examples")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        // The invalid example is rejected on write (see official_examples.rs).
        if name.ends_with(".json") && !name.starts_with("Bundle-") && name != INVALID_EXAMPLE {
            out.push(serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap());
        }
    }
    out.push(json!({"resourceType":"Patient","id":"mueller","name":[{"family":"Müller","given":["Jürgen"]}],"gender":"male"}));
    out.push(json!({"resourceType":"Patient","id":"muller-plain","name":[{"family":"Muller"}],"gender":"female"}));
    for (id, p) in [
        ("ra-1", "0.02"),
        ("ra-2", "0.25"),
        ("ra-3", "0.255"),
        ("ra-4", "0.9"),
    ] {
        let text = format!(
            r#"{{"resourceType":"RiskAssessment","id":"{id}","status":"final","subject":{{"reference":"Patient/example"}},"prediction":[{{"probabilityDecimal":{p}}}]}}"#
        );
        out.push(serde_json::from_str(&text).unwrap());
    }
    out.push(json!({"resourceType":"Observation","id":"logical-subject","status":"final","code":{"text":"Lysholm score"},"subject":{"identifier":{"system":"urn:mrn","value":"4711"}}}));
    out.push(json!({"resourceType":"ResearchStudy","id":"mc","status":"active"}));
    out.push(json!({"resourceType":"ResearchStudy","id":"mc-site-01","status":"active","partOf":[{"reference":"ResearchStudy/mc"}]}));
    out.push(json!({"resourceType":"ResearchStudy","id":"other-site","status":"active","partOf":[{"reference":"ResearchStudy/other"}]}));
    out.push(json!({"resourceType":"ResearchSubject","id":"mc-01-001","status":"on-study","study":{"reference":"ResearchStudy/mc-site-01"},"individual":{"reference":"Patient/example"}}));
    out.push(json!({"resourceType":"ResearchSubject","id":"other-001","status":"on-study","study":{"reference":"ResearchStudy/other-site"},"individual":{"reference":"Patient/example"}}));
    out
}

async fn load(s: &TestStore, all: &[Value]) {
    for v in all {
        let path = format!(
            "{}/{}",
            v["resourceType"].as_str().unwrap(),
            v["id"].as_str().unwrap()
        );
        let r = put_fhir(s.url(&path), v.to_string()).send().await.unwrap();
        assert!(r.status().is_success(), "{path}");
    }
}

/// Every page of a search, following `next` links (strict handling).
async fn pages(url: String) -> Vec<Value> {
    let mut url = url;
    let mut out = Vec::new();
    loop {
        let r = client()
            .get(&url)
            .header("prefer", "handling=strict")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{url}");
        let b: Value = r.json().await.unwrap();
        let next = next_link(&b);
        out.push(b);
        match next {
            Some(n) => url = n,
            None => return out,
        }
    }
}

fn entry_ids(b: &Value) -> Vec<String> {
    b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] != "outcome")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect()
}

/// Ids the server returns for a search, following every page; each must come once.
async fn ids(s: &TestStore, query: &str) -> BTreeSet<String> {
    let sep = if query.contains('?') { '&' } else { '?' };
    let mut out = BTreeSet::new();
    for b in pages(s.url(&format!("{query}{sep}_count=7"))).await {
        for id in entry_ids(&b) {
            assert!(out.insert(id), "{query}: repeated");
        }
    }
    out
}

fn expect(all: &[Value], rtype: &str, pred: impl Fn(&Value) -> bool) -> BTreeSet<String> {
    all.iter()
        .filter(|v| v["resourceType"] == rtype && pred(v))
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect()
}

fn arr(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        Value::Null => vec![],
        other => vec![other],
    }
}

fn has_coding(cc: &Value, system: Option<&str>, code: &str) -> bool {
    arr(&cc["coding"])
        .iter()
        .any(|c| c["code"] == code && system.is_none_or(|s| c["system"] == s))
}

fn num(v: &Value) -> Option<f64> {
    v.as_number().and_then(|n| n.to_string().parse().ok())
}

/// The instant an Observation's effective[x] starts, for the date cases (the fixtures' dates
/// in these cases have full precision or are whole days).
fn effective_start(o: &Value) -> Option<OffsetDateTime> {
    let s = o["effectiveDateTime"]
        .as_str()
        .or_else(|| o["effectivePeriod"]["start"].as_str())
        .or_else(|| o["effectiveInstant"].as_str())?;
    OffsetDateTime::parse(s, &Rfc3339).ok().or_else(|| {
        let d =
            time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")).ok()?;
        Some(d.midnight().assume_utc())
    })
}

/// effective[x] as a half-open range: a day for a date, a second for a dateTime with seconds,
/// a Period's bounds (an open end runs forever).
fn effective_range(o: &Value) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let far = OffsetDateTime::parse("9999-01-01T00:00:00Z", &Rfc3339).ok()?;
    if let Some(p) = o["effectivePeriod"].as_object() {
        let start = p
            .get("start")
            .and_then(Value::as_str)
            .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())?;
        let end = p
            .get("end")
            .and_then(Value::as_str)
            .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
            .map_or(far, |e| e + time::Duration::seconds(1));
        return Some((start, end));
    }
    let s = o["effectiveDateTime"]
        .as_str()
        .or_else(|| o["effectiveInstant"].as_str())?;
    if s.len() == 10 {
        let start = effective_start(o)?;
        return Some((start, start + time::Duration::days(1)));
    }
    let start = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    Some((start, start + time::Duration::seconds(1)))
}

#[tokio::test]
async fn every_parameter_type_and_modifier_matches_a_plain_filter() {
    let s = TestStore::start().await;
    let all = fixtures();
    load(&s, &all).await;
    let loinc = Some("http://loinc.org");

    // token
    assert_eq!(
        ids(&s, "Observation?code=http://loinc.org|8867-4").await,
        expect(&all, "Observation", |o| has_coding(
            &o["code"], loinc, "8867-4"
        ))
    );
    assert_eq!(
        ids(&s, "Observation?code=8867-4").await,
        expect(&all, "Observation", |o| has_coding(
            &o["code"], None, "8867-4"
        ))
    );
    assert_eq!(
        ids(&s, "Observation?status=final,amended").await,
        expect(&all, "Observation", |o| o["status"] == "final"
            || o["status"] == "amended")
    );
    assert_eq!(
        ids(&s, "Observation?status:not=final").await,
        expect(&all, "Observation", |o| o["status"] != "final")
    );
    assert_eq!(
        ids(&s, "Observation?code=http://loinc.org|").await,
        expect(&all, "Observation", |o| arr(&o["code"]["coding"])
            .iter()
            .any(|c| c["system"] == "http://loinc.org"))
    );
    assert_eq!(
        ids(&s, "Patient?gender=male").await,
        expect(&all, "Patient", |p| p["gender"] == "male")
    );
    assert_eq!(
        ids(&s, "Patient?active=true").await,
        expect(&all, "Patient", |p| p["active"] == true)
    );
    let e = expect(&all, "Patient", |p| {
        arr(&p["identifier"])
            .iter()
            .any(|i| i["system"] == "urn:oid:1.2.36.146.595.217.0.1" && i["value"] == "12345")
    });
    assert!(!e.is_empty());
    assert_eq!(
        ids(
            &s,
            "Patient?identifier=urn:oid:1.2.36.146.595.217.0.1|12345"
        )
        .await,
        e
    );

    // string: starts-with, case- and accent-insensitive; :exact; :contains
    let family = |p: &Value| {
        arr(&p["name"])
            .iter()
            .flat_map(|n| arr(&n["family"]))
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect::<Vec<_>>()
    };
    let fold = |s: &str| s.to_lowercase().replace('ü', "u");
    assert_eq!(
        ids(&s, "Patient?family=MUL").await,
        expect(&all, "Patient", |p| family(p)
            .iter()
            .any(|f| fold(f).starts_with("mul")))
    );
    assert_eq!(
        ids(&s, "Patient?family:exact=Müller").await,
        BTreeSet::from(["mueller".to_string()])
    );
    assert_eq!(
        ids(&s, "Patient?family:contains=alm").await,
        expect(&all, "Patient", |p| family(p)
            .iter()
            .any(|f| fold(f).contains("alm")))
    );

    // reference: Type/id, id only, :Type
    let subject_is = |o: &Value, r: &str| o["subject"]["reference"] == r;
    let e = expect(&all, "Observation", |o| subject_is(o, "Patient/example"));
    assert!(e.len() > 5);
    assert_eq!(ids(&s, "Observation?subject=Patient/example").await, e);
    assert_eq!(ids(&s, "Observation?subject:Patient=example").await, e);
    assert_eq!(ids(&s, "Observation?patient=example").await, e);
    assert_eq!(
        ids(&s, "Observation?subject=example").await,
        expect(&all, "Observation", |o| o["subject"]["reference"]
            .as_str()
            .is_some_and(|r| r.ends_with("/example")))
    );

    // date: prefixes over effective[x]
    let t = |s: &str| OffsetDateTime::parse(s, &Rfc3339).unwrap();
    let day_start = t("2012-09-17T00:00:00Z");
    let day_end = t("2012-09-18T00:00:00Z");
    let starts_between = |o: &Value, a: OffsetDateTime, b: OffsetDateTime| {
        effective_start(o).is_some_and(|x| x >= a && x < b) && o["effectivePeriod"].is_null()
    };
    assert_eq!(
        ids(&s, "Observation?date=2012-09-17").await,
        expect(&all, "Observation", |o| starts_between(
            o, day_start, day_end
        ))
    );
    let after = expect(&all, "Observation", |o| {
        effective_start(o).is_some_and(|x| x >= t("2013-04-03T00:00:00Z"))
    });
    assert!(!after.is_empty());
    assert_eq!(ids(&s, "Observation?date=sa2013-04-02").await, after);
    let before = expect(&all, "Observation", |o| {
        effective_start(o).is_some_and(|x| x < t("2012-01-01T00:00:00Z"))
            && o["effectivePeriod"]["end"]
                .as_str()
                .is_none_or(|e| e < "2012")
    });
    assert_eq!(ids(&s, "Observation?date=eb2012").await, before);
    let (ge, lt) = (
        ids(&s, "Observation?date=ge2012").await,
        ids(&s, "Observation?date=lt2012").await,
    );
    let dated = expect(&all, "Observation", |o| effective_start(o).is_some());
    assert!(
        ge.union(&lt)
            .cloned()
            .collect::<BTreeSet<_>>()
            .is_superset(&dated),
        "every dated Observation is before or in/after 2012"
    );
    // AND by repetition, with the specification's rules for ranges: ge = the range reaches past
    // the end of 2012's range or lies inside it; lt = it starts before 2014.
    let both = ids(&s, "Observation?date=ge2012&date=lt2014").await;
    let (y2012, y2013, y2014) = (
        t("2012-01-01T00:00:00Z"),
        t("2013-01-01T00:00:00Z"),
        t("2014-01-01T00:00:00Z"),
    );
    assert_eq!(
        both,
        expect(&all, "Observation", |o| effective_range(o)
            .is_some_and(|(a, b)| (b > y2013 || a >= y2012) && a < y2014))
    );

    // number: implicit precision (0.25 is [0.245, 0.255))
    let prob = |r: &Value| num(&r["prediction"][0]["probabilityDecimal"]);
    assert_eq!(
        ids(&s, "RiskAssessment?probability=0.25").await,
        expect(&all, "RiskAssessment", |r| prob(r)
            .is_some_and(|p| (0.245..0.255).contains(&p)))
    );
    assert_eq!(
        ids(&s, "RiskAssessment?probability=gt0.25").await,
        expect(&all, "RiskAssessment", |r| prob(r)
            .is_some_and(|p| p > 0.25))
    );
    assert_eq!(
        ids(&s, "RiskAssessment?probability=le0.02").await,
        expect(&all, "RiskAssessment", |r| prob(r)
            .is_some_and(|p| p <= 0.02))
    );

    // quantity: prefixes, value|system|code
    let vq = |o: &Value| num(&o["valueQuantity"]["value"]);
    assert_eq!(
        ids(&s, "Observation?value-quantity=gt100").await,
        expect(&all, "Observation", |o| vq(o).is_some_and(|v| v > 100.0))
    );
    let e = expect(&all, "Observation", |o| {
        vq(o).is_some_and(|v| (184.5..185.5).contains(&v))
            && o["valueQuantity"]["code"] == "[lb_av]"
    });
    assert!(!e.is_empty());
    assert_eq!(
        ids(
            &s,
            "Observation?value-quantity=185|http://unitsofmeasure.org|[lb_av]"
        )
        .await,
        e
    );

    // composite: code with value, and per component
    let comp = |o: &Value, code: &str, min: f64| {
        arr(&o["component"]).iter().any(|c| {
            has_coding(&c["code"], loinc, code)
                && num(&c["valueQuantity"]["value"]).is_some_and(|v| v > min)
        })
    };
    let e = expect(&all, "Observation", |o| comp(o, "8480-6", 100.0));
    assert!(!e.is_empty());
    assert_eq!(
        ids(
            &s,
            "Observation?component-code-value-quantity=http://loinc.org|8480-6$gt100"
        )
        .await,
        e
    );
    assert_eq!(
        ids(
            &s,
            "Observation?code-value-quantity=http://loinc.org|29463-7$gt80"
        )
        .await,
        expect(&all, "Observation", |o| has_coding(
            &o["code"], loinc, "29463-7"
        ) && vq(o)
            .is_some_and(|v| v > 80.0))
    );

    // uri
    let vitals = "http://hl7.org/fhir/StructureDefinition/vitalsigns";
    assert_eq!(
        ids(&s, &format!("Observation?_profile={vitals}")).await,
        expect(&all, "Observation", |o| arr(&o["meta"]["profile"])
            .iter()
            .any(|p| *p == vitals))
    );

    // :missing
    // A subject with only a display has no reference value, so it counts as missing.
    assert_eq!(
        ids(&s, "Observation?subject:missing=true").await,
        expect(&all, "Observation", |o| o["subject"]["reference"].is_null())
    );
    assert_eq!(
        ids(&s, "Observation?value-quantity:missing=false").await,
        expect(&all, "Observation", |o| !o["valueQuantity"].is_null())
    );

    // token :text (CodeableConcept.text and Coding.display), :of-type; reference :identifier
    let texts = |cc: &Value| {
        let mut t: Vec<String> = arr(&cc["coding"])
            .iter()
            .filter_map(|c| c["display"].as_str().map(fold))
            .collect();
        t.extend(cc["text"].as_str().map(fold));
        t
    };
    let e = expect(&all, "Observation", |o| {
        texts(&o["code"]).iter().any(|t| t.starts_with("heart"))
    });
    assert!(!e.is_empty());
    assert_eq!(ids(&s, "Observation?code:text=Heart").await, e);
    let mr = "http://terminology.hl7.org/CodeSystem/v2-0203|MR|12345";
    let e = expect(&all, "Patient", |p| {
        arr(&p["identifier"]).iter().any(|i| {
            i["value"] == "12345"
                && arr(&i["type"]["coding"]).iter().any(|c| {
                    c["system"] == "http://terminology.hl7.org/CodeSystem/v2-0203"
                        && c["code"] == "MR"
                })
        })
    });
    assert!(!e.is_empty());
    assert_eq!(
        ids(&s, &format!("Patient?identifier:of-type={mr}")).await,
        e
    );
    assert_eq!(
        ids(&s, "Observation?subject:identifier=urn:mrn|4711").await,
        BTreeSet::from(["logical-subject".to_string()])
    );

    // _id
    assert_eq!(
        ids(&s, "Patient?_id=example,mueller").await,
        BTreeSet::from(["example".to_string(), "mueller".to_string()])
    );
}

/// Text that does not compress (a database may compress a long key and so hide the limit),
/// with characters of one to four bytes, so that a cut can fall inside one.
fn incompressible_text(len: usize, seed: u64) -> String {
    let alphabet: Vec<char> = "abcdefghijklmnopqrstuvwxyzäöüßéø漢字😀ABCDEFGHIJ"
        .chars()
        .collect();
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            alphabet[((x >> 33) % alphabet.len() as u64) as usize]
        })
        .collect()
}

/// A free-text value longer than any database index key (PostgreSQL refuses b-tree keys above
/// about 2,700 bytes) is stored, and found by its start, as written and as a token: index keys
/// are cut at 1,000 bytes on both backends, and so are the search values they meet.
#[tokio::test]
async fn values_longer_than_an_index_key_are_stored_and_found() {
    let s = TestStore::start().await;
    let family = incompressible_text(4000, 7);
    let code = incompressible_text(1500, 11);
    let patient =
        json!({"resourceType": "Patient", "id": "long-name", "name": [{"family": family}]});
    let observation = json!({"resourceType": "Observation", "id": "long-code", "status": "final",
        "code": {"coding": [{"system": "urn:example:long", "code": code}]}, "valueString": "x"});
    for v in [&patient, &observation] {
        let path = format!(
            "{}/{}",
            v["resourceType"].as_str().unwrap(),
            v["id"].as_str().unwrap()
        );
        let r = put_fhir(s.url(&path), v.to_string()).send().await.unwrap();
        let status = r.status();
        assert!(
            status.is_success(),
            "{path}: {status} {}",
            r.text().await.unwrap_or_default()
        );
    }
    let found = |rt: &'static str, param: &'static str, value: String| {
        let mut url = reqwest::Url::parse(&s.url(rt)).unwrap();
        url.query_pairs_mut().append_pair(param, &value);
        async move { entry_ids(&get_json(url.as_str()).await) }
    };
    let start: String = family.chars().take(20).collect();
    assert_eq!(found("Patient", "family", start).await, ["long-name"]);
    assert_eq!(
        found("Patient", "family", family.clone()).await,
        ["long-name"]
    );
    assert_eq!(
        found("Patient", "family:exact", family.clone()).await,
        ["long-name"]
    );
    assert_eq!(
        found("Observation", "code", format!("urn:example:long|{code}")).await,
        ["long-code"]
    );
    // A value that differs within the key is another value.
    let other: String = family
        .chars()
        .enumerate()
        .map(|(i, c)| if i == 10 { '#' } else { c })
        .collect();
    assert!(found("Patient", "family:exact", other).await.is_empty());
}

#[tokio::test]
async fn last_updated_and_malformed_values() {
    let s = TestStore::start().await;
    let put = |id: &'static str| {
        let url = s.url(&format!("Patient/{id}"));
        async move {
            let v: Value = put_fhir(url, json!({"resourceType":"Patient","id":id}).to_string())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["meta"]["lastUpdated"].as_str().unwrap().to_string()
        }
    };
    let first = put("first").await;
    put("second").await;
    let later = ids(
        &s,
        &format!("Patient?_lastUpdated=gt{}", first.replace('+', "%2B")),
    )
    .await;
    assert_eq!(later, BTreeSet::from(["second".to_string()]));
    let all = ids(
        &s,
        &format!("Patient?_lastUpdated=ge{}", first.replace('+', "%2B")),
    )
    .await;
    assert_eq!(all.len(), 2);
    for (q, param) in [
        ("Observation?date=2024-13-45", "date"),
        ("Observation?value-quantity=abc", "value-quantity"),
        ("Observation?code-value-quantity=x", "code-value-quantity"),
    ] {
        let r = client().get(s.url(q)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{q}");
        let oo: Value = r.json().await.unwrap();
        assert_eq!(oo["issue"][0]["expression"][0], param, "{q}");
    }
}

#[tokio::test]
async fn paging_while_writes_continue_skips_and_repeats_nothing() {
    let s = TestStore::start().await;
    for i in 0..60 {
        let id = format!("p{i:03}");
        client()
            .put(s.url(&format!("Observation/{id}")))
            .header("content-type", "application/fhir+json")
            .body(
                json!({"resourceType":"Observation","id":id,"status":"final","code":{"text":"x"}})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
    }
    let mut url = s.url("Observation?status=final&_count=8");
    let mut seen = Vec::new();
    let mut n = 0;
    loop {
        let b: Value = integration_tests::get_json(&url).await;
        seen.extend(
            b["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["resource"]["id"].as_str().unwrap().to_string()),
        );
        // Between pages: new resources before and after the cursor, and updates of seen ones.
        n += 1;
        for id in [format!("a{n:03}"), format!("z{n:03}")] {
            client().put(s.url(&format!("Observation/{id}"))).header("content-type", "application/fhir+json")
                .body(json!({"resourceType":"Observation","id":id,"status":"final","code":{"text":"new"}}).to_string()).send().await.unwrap();
        }
        put_fhir(s.url("Observation/p000"), json!({"resourceType":"Observation","id":"p000","status":"final","code":{"text":format!("update {n}")}}).to_string()).send().await.unwrap();
        match next_link(&b) {
            Some(next) => url = next,
            None => break,
        }
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a resource was repeated");
    for i in 0..60 {
        assert!(unique.contains(&format!("p{i:03}")), "p{i:03} was skipped");
    }
}

/// Ids in server order, following every page of `_count` results.
async fn ordered_ids(s: &TestStore, query: &str, count: usize) -> Vec<String> {
    pages(s.url(&format!("{query}&_count={count}")))
        .await
        .iter()
        .flat_map(entry_ids)
        .collect()
}

#[tokio::test]
async fn sort_on_several_keys_pages_in_order() {
    let s = TestStore::start().await;
    let all = fixtures();
    load(&s, &all).await;
    let observations: Vec<&Value> = all
        .iter()
        .filter(|v| v["resourceType"] == "Observation")
        .collect();

    // -date: newest first, resources without a date last, ties by id.
    let mut expected: Vec<(Option<OffsetDateTime>, String)> = observations
        .iter()
        .map(|o| (effective_start(o), o["id"].as_str().unwrap().to_string()))
        .collect();
    expected.sort_by(|a, b| match (a.0, b.0) {
        (Some(x), Some(y)) => y.cmp(&x).then(a.1.cmp(&b.1)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.1.cmp(&b.1),
    });
    let expected: Vec<String> = expected.into_iter().map(|(_, id)| id).collect();
    assert_eq!(
        ordered_ids(&s, "Observation?_sort=-date", 9).await,
        expected
    );

    // status, then -_id: two keys, text.
    let mut by_status: Vec<(String, String)> = observations
        .iter()
        .map(|o| {
            (
                o["status"].as_str().unwrap().to_string(),
                o["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    by_status.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let expected: Vec<String> = by_status.into_iter().map(|(_, id)| id).collect();
    assert_eq!(
        ordered_ids(&s, "Observation?_sort=status,-_id", 11).await,
        expected
    );

    // A cursor from another search is refused, naming _cursor.
    let r = client()
        .get(s.url("Observation?_sort=status&_cursor=%5B%22x%22%5D"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// (mode, Type/id) of every entry of every page.
async fn entries(s: &TestStore, query: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for b in pages(s.url(query)).await {
        for e in b["entry"].as_array().into_iter().flatten() {
            out.push((
                e["search"]["mode"].as_str().unwrap().to_string(),
                format!(
                    "{}/{}",
                    e["resource"]["resourceType"].as_str().unwrap(),
                    e["resource"]["id"].as_str().unwrap()
                ),
            ));
        }
    }
    out
}

#[tokio::test]
async fn include_and_revinclude_without_a_cap() {
    let s = TestStore::start().await;
    let mut all = fixtures();
    // More referencing resources than any page or chunk size.
    for i in 0..450 {
        all.push(json!({"resourceType":"Observation","id":format!("many-{i:03}"),"status":"final","code":{"text":"x"},"subject":{"reference":"Patient/pat2"}}));
    }
    load(&s, &all).await;
    let exists = |r: &str| {
        all.iter().any(|v| {
            format!(
                "{}/{}",
                v["resourceType"].as_str().unwrap(),
                v["id"].as_str().unwrap()
            ) == r
        })
    };

    // _include: the subjects of the matches that exist.
    let got = entries(
        &s,
        "Observation?code=http://loinc.org|8867-4&_include=Observation:subject",
    )
    .await;
    let matched: BTreeSet<String> = got
        .iter()
        .filter(|(m, _)| m == "match")
        .map(|(_, r)| r.clone())
        .collect();
    let included: BTreeSet<String> = got
        .iter()
        .filter(|(m, _)| m == "include")
        .map(|(_, r)| r.clone())
        .collect();
    let expected: BTreeSet<String> = all
        .iter()
        .filter(|o| {
            matched.contains(&format!("Observation/{}", o["id"].as_str().unwrap()))
                && o["resourceType"] == "Observation"
        })
        .filter_map(|o| o["subject"]["reference"].as_str().map(str::to_string))
        .filter(|r| exists(r))
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(included, expected);

    // _revinclude: every Observation about Patient/pat2 (450 + the examples), on one page.
    let got = entries(&s, "Patient?_id=pat2&_revinclude=Observation:subject").await;
    let rev: BTreeSet<String> = got
        .iter()
        .filter(|(m, _)| m == "include")
        .map(|(_, r)| r.clone())
        .collect();
    let expected: BTreeSet<String> = all
        .iter()
        .filter(|o| {
            o["resourceType"] == "Observation" && o["subject"]["reference"] == "Patient/pat2"
        })
        .map(|o| format!("Observation/{}", o["id"].as_str().unwrap()))
        .collect();
    assert!(expected.len() > 450);
    assert_eq!(rev, expected);

    // :iterate follows included resources: Observation -> Patient -> Organization.
    let got = entries(&s, "Observation?_id=example&_include=Observation:subject&_include:iterate=Patient:organization").await;
    let inc: BTreeSet<String> = got
        .iter()
        .filter(|(m, _)| m == "include")
        .map(|(_, r)| r.clone())
        .collect();
    let patient = all
        .iter()
        .find(|v| v["resourceType"] == "Patient" && v["id"] == "example")
        .unwrap();
    let org = patient["managingOrganization"]["reference"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(exists(&org));
    assert_eq!(inc, BTreeSet::from(["Patient/example".to_string(), org]));
}

#[tokio::test]
async fn elements_summary_compartments_and_system_search() {
    let s = TestStore::start().await;
    let all = fixtures();
    load(&s, &all).await;

    let b: Value =
        integration_tests::get_json(&s.url("Observation?_id=example&_elements=status,code")).await;
    let r = &b["entry"][0]["resource"];
    let keys: BTreeSet<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["resourceType", "id", "meta", "status", "code"])
    );
    assert!(r["meta"]["tag"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["code"] == "SUBSETTED"));
    let b: Value =
        integration_tests::get_json(&s.url("Observation?_id=example&_summary=data")).await;
    assert!(
        b["entry"][0]["resource"]["text"].is_null()
            && !b["entry"][0]["resource"]["status"].is_null()
    );
    let r = client()
        .get(s.url("Observation?_summary=true"))
        .header("prefer", "handling=strict")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // Patient compartment: subject or performer is the Patient.
    let in_compartment = |o: &Value| {
        o["subject"]["reference"] == "Patient/example"
            || arr(&o["performer"])
                .iter()
                .any(|p| p["reference"] == "Patient/example")
    };
    assert_eq!(
        ids(&s, "Patient/example/Observation?").await,
        expect(&all, "Observation", in_compartment)
    );
    assert_eq!(
        ids(
            &s,
            "Patient/example/Observation?code=http://loinc.org|8867-4"
        )
        .await,
        expect(&all, "Observation", |o| in_compartment(o)
            && has_coding(&o["code"], Some("http://loinc.org"), "8867-4"))
    );
    let r = client()
        .get(s.url("Patient/example/Organization"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // System search over several types, paged across the type boundary.
    let mut url = format!("{}?_type=Patient,Organization&_count=4", s.base);
    let mut got = BTreeSet::new();
    loop {
        let b: Value = integration_tests::get_json(&url).await;
        for e in b["entry"].as_array().into_iter().flatten() {
            assert!(got.insert(format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap(),
                e["resource"]["id"].as_str().unwrap()
            )));
        }
        match next_link(&b) {
            Some(n) => url = n,
            None => break,
        }
    }
    let expected: BTreeSet<String> = all
        .iter()
        .filter(|v| v["resourceType"] == "Patient" || v["resourceType"] == "Organization")
        .map(|v| {
            format!(
                "{}/{}",
                v["resourceType"].as_str().unwrap(),
                v["id"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(got, expected);
    let b: Value = integration_tests::get_json(&format!(
        "{}?_type=Patient,Organization&_summary=count",
        s.base
    ))
    .await;
    assert_eq!(b["total"].as_u64().unwrap() as usize, expected.len());
}

/// A store whose reads are cancelled after `statement_timeout`, with `Patient/example`.
async fn store_with_patient(statement_timeout: std::time::Duration) -> TestStore {
    let s = TestStore::start_limited(tempfile::tempdir().unwrap(), statement_timeout, |_| {}).await;
    let r = put_fhir(
        s.url("Patient/example"),
        json!({"resourceType": "Patient", "id": "example"}).to_string(),
    )
    .send()
    .await
    .unwrap();
    assert!(r.status().is_success());
    s
}

/// `n` Observations of one patient, written in transactions of 500.
async fn load_observations(s: &TestStore, n: usize) {
    for chunk in 0..n.div_ceil(500) {
        let entries: Vec<Value> = (chunk * 500..((chunk + 1) * 500).min(n))
            .map(|i| {
                json!({"resource": {"resourceType": "Observation", "id": format!("t{i:05}"), "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
                    "subject": {"reference": "Patient/example"},
                    "effectiveDateTime": format!("2025-{:02}-{:02}T{:02}:{:02}:00Z", 1 + i % 12, 1 + i % 28, i % 24, i % 60),
                    "valueQuantity": {"value": i % 11, "unit": "{score}", "system": "http://unitsofmeasure.org", "code": "{score}"}},
                  "request": {"method": "PUT", "url": format!("Observation/t{i:05}")}})
            })
            .collect();
        let b = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        let r = integration_tests::post_fhir(&s.base, b.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
}

/// A read past the statement timeout (here 1 ms) is cancelled by the database and answered
/// with a 422 `too-costly` that names the setting, never a 500 or a hung connection: after 40
/// such searches at once (more than the PostgreSQL pool's 16 connections) the store still
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_query_past_the_statement_timeout_is_too_costly_and_frees_its_connection() {
    let s = store_with_patient(std::time::Duration::from_millis(1)).await;
    load_observations(&s, 3000).await;
    let heavy =
        s.url("Observation?subject=Patient/example&_sort=-value-quantity,-date&_count=1000");
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let url = heavy.clone();
        set.spawn(async move {
            let r = client().get(url).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        });
    }
    let answers = set.join_all().await;
    let mut too_costly = 0;
    for (status, body) in &answers {
        match status {
            200 => {}
            422 => {
                assert_eq!(body["issue"][0]["code"], "too-costly", "{body}");
                let text = body["issue"][0]["diagnostics"].as_str().unwrap();
                assert!(text.contains("TRIALBRIDGE_STATEMENT_TIMEOUT"), "{text}");
                too_costly += 1;
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert!(too_costly > 0, "no search ran past 1 ms");
    // The connections are free again: a read answers (a 1 ms budget may cancel one on a busy
    // server, so a few tries).
    let mut read = 0;
    for _ in 0..20 {
        read = client()
            .get(s.url("Patient/example"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if read == 200 {
            break;
        }
        assert_eq!(read, 422);
    }
    assert_eq!(read, 200);
}

/// After a bulk load the planner must know the tables' sizes: on PostgreSQL without fresh
/// statistics one `_sort` page over 20,000 Observations took 48 s (a nested loop over what the
/// planner believed empty). The bound is the server's own: a 5 s statement timeout, so a slow
/// plan fails as `too-costly` instead of passing slowly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sort_page_after_a_bulk_load_is_planned_with_statistics() {
    let s = store_with_patient(std::time::Duration::from_secs(5)).await;
    load_observations(&s, 20_000).await;
    for query in [
        "Observation?_sort=-date&_count=20",
        "Observation?subject=Patient/example&_sort=-date&_count=20",
        "Observation?code=http://loinc.org|72514-3&_sort=date&_count=20",
    ] {
        let r = client().get(s.url(query)).send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{query}: {body}");
        assert_eq!(body["entry"].as_array().map_or(0, Vec::len), 20, "{query}");
    }
}

/// Text with the characters a bulk write must escape (backslash, tab, line breaks; PostgreSQL
/// takes index rows by COPY) is found exactly as written, in a transaction of several
/// resources and after an update; the old rows of an updated resource are gone.
#[tokio::test]
async fn text_with_escapes_is_found_as_written() {
    let s = TestStore::start().await;
    let names = [
        ("back", "Back\\slash"),
        ("tab", "Tab\there"),
        ("lf", "Line\nbreak"),
        ("cr", "Carriage\rreturn"),
        ("null", "\\N"),
        ("quote", "O'Brien \"Bob\""),
        ("uni", "Ünïcødé 漢字 🦴"),
    ];
    let entries: Vec<Value> = names
        .iter()
        .map(|(id, family)| {
            json!({"resource": {"resourceType":"Patient","id":format!("esc-{id}"),"name":[{"family":family}]},
                   "request": {"method":"PUT","url":format!("Patient/esc-{id}")}})
        })
        .collect();
    let bundle = json!({"resourceType":"Bundle","type":"transaction","entry":entries});
    let r = integration_tests::client()
        .post(s.url(""))
        .header("content-type", "application/fhir+json")
        .body(bundle.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_eq!(status, 200, "{}", r.text().await.unwrap());
    let exact = |family: &str| {
        // FHIR search escapes `\`, `,`, `|` and `$` with a backslash.
        let escaped = family
            .replace('\\', "\\\\")
            .replace(',', "\\,")
            .replace('|', "\\|")
            .replace('$', "\\$");
        reqwest::Url::parse_with_params(&s.url("Patient"), &[("family:exact", escaped)])
            .unwrap()
            .to_string()
    };
    let found = |url: String| async move {
        let b = pages(url).await;
        b.iter().flat_map(entry_ids).collect::<BTreeSet<String>>()
    };
    for (id, family) in names {
        assert_eq!(
            found(exact(family)).await,
            BTreeSet::from([format!("esc-{id}")]),
            "{family:?}"
        );
    }
    // An update replaces the rows: the old name is gone, the new one is found.
    let r = put_fhir(
        s.url("Patient/esc-tab"),
        json!({"resourceType":"Patient","id":"esc-tab","name":[{"family":"Tab\tagain"}]})
            .to_string(),
    )
    .send()
    .await
    .unwrap();
    assert!(r.status().is_success());
    assert!(found(exact("Tab\there")).await.is_empty());
    assert_eq!(
        found(exact("Tab\tagain")).await,
        BTreeSet::from(["esc-tab".to_string()])
    );
}
