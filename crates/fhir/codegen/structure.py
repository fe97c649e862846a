"""Generates crates/fhir/src/generated/{structure,value_sets}.rs: the R4 element tables the
validator walks, the core invariants and the required/extensible bindings with their
expansions. Called by generate.py; inputs are the official R4 4.0.1 definitions."""
import json
import os

FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
SD = "http://hl7.org/fhir/StructureDefinition/"
# Quantity profiles used as element types in R4; they validate as Quantity plus their invariants.
QUANTITY_PROFILES = {"SimpleQuantity", "MoneyQuantity", "Age", "Count", "Distance", "Duration"}


def rs(s):
    return json.dumps(s, ensure_ascii=False)


class Gen:
    def __init__(self, src):
        self.src = src
        self.types = {}  # name -> dict(kind, elements[], invariants[])
        self.invariants = {}  # key -> (severity, human, expression)
        self.value_sets = {}
        self.code_systems = {}
        self.bound = {}  # vs url -> index

    def load(self, name):
        with open(os.path.join(self.src, name), encoding="utf-8") as f:
            return json.load(f)

    def structure_definitions(self):
        out = []
        for name in ("profiles-types.json", "profiles-resources.json"):
            for e in self.load(name)["entry"]:
                r = e["resource"]
                if r.get("resourceType") != "StructureDefinition" or r.get("fhirVersion") != "4.0.1":
                    continue
                if r["url"] != SD + r["name"]:
                    continue
                out.append(r)
        return out

    def type_code(self, t):
        code = t["code"]
        for ext in t.get("extension", []):
            if ext["url"] == FHIR_TYPE_EXT:
                return ext.get("valueUrl") or ext.get("valueUri")
        # Quantity profiles on an element's type (Range.low is a SimpleQuantity) name the type,
        # so that their invariants (sqty-1, mny-1) apply.
        for prof in t.get("profile", []):
            name = prof.rsplit("/", 1)[-1]
            if code == "Quantity" and name in QUANTITY_PROFILES:
                return name
        if code.startswith("http://hl7.org/fhirpath/System."):
            return {"String": "string", "Boolean": "boolean", "Integer": "integer",
                    "Decimal": "decimal", "DateTime": "dateTime", "Time": "time",
                    "Date": "date"}[code.rsplit(".", 1)[1]]
        return code

    def add_invariants(self, el):
        keys = []
        for c in el.get("constraint", []):
            key = c["key"]
            if key in ("ele-1", "ext-1"):
                continue
            self.invariants.setdefault(key, (c["severity"], c.get("human", ""), c.get("expression", "")))
            keys.append(key)
        return keys

    def build(self):
        sds = self.structure_definitions()
        for sd in sds:
            kind = sd["kind"]
            if sd.get("derivation") == "constraint":
                continue
            if kind == "logical":
                continue
            name = sd["name"]
            els = sd["snapshot"]["element"]
            root = els[0]["path"]
            tkind = {"primitive-type": "Primitive", "complex-type": "Complex", "resource": "Resource"}[kind]
            if sd.get("abstract"):
                tkind = "Abstract" if kind == "resource" else tkind
            self.types[name] = {"kind": tkind, "elements": [], "invariants": self.add_invariants(els[0])}
            for el in els[1:]:
                path = el["path"]
                parent, leaf = path.rsplit(".", 1)
                owner = name if parent == root else parent
                if owner != name and owner not in self.types:
                    self.types[owner] = {"kind": "Backbone", "elements": [], "invariants": []}
                if "contentReference" in el:
                    ref = el["contentReference"].lstrip("#")
                    tys = [ref]
                else:
                    tys = []
                    for t in el.get("type", []):
                        code = self.type_code(t)
                        if code in ("BackboneElement", "Element") and leaf not in ("id", "extension", "modifierExtension") and len(el["type"]) == 1 and path.count(".") >= 1 and kind != "primitive-type":
                            if code == "Element" and name in ("Element",):
                                pass
                            code = path
                            self.types.setdefault(path, {"kind": "Backbone", "elements": [], "invariants": []})
                            self.types[path]["invariants"] = self.add_invariants(el)
                        targets = [p[len(SD):] for p in t.get("targetProfile", []) if p.startswith(SD)]
                        tys.append((code, targets))
                binding = None
                b = el.get("binding")
                if b and b.get("strength") in ("required", "extensible") and b.get("valueSet"):
                    binding = (b["strength"], b["valueSet"].split("|")[0])
                el_inv = [] if any(isinstance(t, tuple) and t[0] == path for t in tys) else self.add_invariants(el)
                entry = {
                    "leaf": leaf, "min": el["min"], "many": el["max"] != "1",
                    "max0": el["max"] == "0", "binding": binding, "invariants": el_inv,
                }
                if isinstance(tys and tys[0], str):
                    entry["types"] = [(tys[0], [])]
                else:
                    entry["types"] = tys
                if kind == "primitive-type" and leaf == "value":
                    continue
                self.types[owner]["elements"].append(entry)

    # --- terminology ---
    def terminology(self):
        for name in ("valuesets.json", "v3-codesystems.json", "v2-tables.json"):
            for e in self.load(name)["entry"]:
                r = e["resource"]
                if r["resourceType"] == "CodeSystem":
                    self.code_systems.setdefault(r["url"], r)
                elif r["resourceType"] == "ValueSet":
                    self.value_sets.setdefault(r["url"], r)

    def cs_codes(self, url):
        """All codes of a complete code system as {code: [ancestors]}, or None."""
        cs = self.code_systems.get(url)
        if not cs or cs.get("content") not in ("complete", None) or not cs.get("concept"):
            return None
        out = {}

        def walk(concepts, ancestors):
            for c in concepts:
                out[c["code"]] = ancestors
                walk(c.get("concept", []), ancestors + [c["code"]])
        walk(cs["concept"], [])
        # Parent links by property (v3 style "subsumedBy").
        for c in self.iter_concepts(cs["concept"]):
            for p in c.get("property", []):
                if p.get("code") in ("subsumedBy", "parent") and p.get("valueCode"):
                    out[c["code"]] = out[c["code"]] + [p["valueCode"]]
        return out

    def iter_concepts(self, cs):
        for c in cs:
            yield c
            yield from self.iter_concepts(c.get("concept", []))

    def descendants(self, codes, root):
        res = set()
        changed = True
        res_parents = {root}
        while changed:
            changed = False
            for c, anc in codes.items():
                if c not in res and any(a in res_parents for a in anc):
                    res.add(c)
                    res_parents.add(c)
                    changed = True
        return res

    def expand(self, url, seen=()):
        """{system: set(codes) or None (any code)} or None when the set cannot be expanded."""
        vs = self.value_sets.get(url)
        if vs is None or url in seen:
            return None
        compose = vs.get("compose")
        if not compose or compose.get("exclude"):
            return None
        out = {}
        for inc in compose.get("include", []):
            for sub in inc.get("valueSet", []):
                e = self.expand(sub.split("|")[0], seen + (url,))
                if e is None:
                    return None
                for s, c in e.items():
                    merge(out, s, c)
            system = inc.get("system")
            if not system:
                continue
            if "concept" in inc:
                merge(out, system, {c["code"] for c in inc["concept"]})
                continue
            codes = self.cs_codes(system)
            if not inc.get("filter"):
                merge(out, system, set(codes) if codes is not None else None)
                continue
            if codes is None:
                return None
            sel = set()
            for f in inc["filter"]:
                if f["op"] == "is-a" and f["property"] == "concept":
                    part = self.descendants(codes, f["value"]) | {f["value"]}
                elif f["op"] == "descendent-of" and f["property"] == "concept":
                    part = self.descendants(codes, f["value"])
                else:
                    return None
                sel = part if not sel else sel & part
            merge(out, system, sel)
        return out


def merge(out, system, codes):
    if system in out and out[system] is None:
        return
    if codes is None:
        out[system] = None
    else:
        out.setdefault(system, set()).update(codes)


def main(src, out_dir, header):
    g = Gen(src)
    g.build()
    g.terminology()
    vs_rows = []
    vs_index = {}

    def vs_ref(url):
        if url in vs_index:
            return vs_index[url]
        exp = g.expand(url)
        if exp is None:
            vs_index[url] = None
            return None
        vs_index[url] = len(vs_rows)
        vs_rows.append((url, exp))
        return vs_index[url]

    names = sorted(g.types)
    with open(os.path.join(out_dir, "structure.rs"), "w", encoding="utf-8") as f:
        f.write(header)
        f.write("use crate::structure::{Binding, BindingStrength, ElementDef, Invariant, TypeDef, TypeKind, TypeRef};\n")
        f.write("use super::value_sets::VALUE_SETS;\n\n")
        inv_keys = sorted(g.invariants)
        f.write("/// The core invariants (constraint keys) of R4, sorted by key.\n")
        f.write("pub static INVARIANTS: &[Invariant] = &[\n")
        for k in inv_keys:
            sev, human, expr = g.invariants[k]
            f.write(f"    Invariant {{ key: {rs(k)}, error: {str(sev == 'error').lower()}, human: {rs(human)}, expression: {rs(expr)} }},\n")
        f.write("];\n\n")
        inv_pos = {k: i for i, k in enumerate(inv_keys)}
        f.write("/// Every R4 data type, resource type and backbone element, sorted by name; each\n")
        f.write("/// type's elements are sorted by their JSON name (choice elements once per type).\n")
        f.write("pub static TYPES: &[TypeDef] = &[\n")
        nel = 0
        for n in names:
            t = g.types[n]
            rows = []
            for e in t["elements"]:
                leaf = e["leaf"]
                choice = leaf.endswith("[x]")
                base = leaf[:-3] if choice else leaf
                b = "None"
                if e["binding"]:
                    idx = vs_ref(e["binding"][1])
                    if idx is not None:
                        strength = "Required" if e["binding"][0] == "required" else "Extensible"
                        b = f"Some(Binding {{ strength: BindingStrength::{strength}, value_set: &VALUE_SETS[{idx}] }})"
                invs = ", ".join(f"&INVARIANTS[{inv_pos[k]}]" for k in e["invariants"])
                for code, targets in e["types"]:
                    # JSON names a choice branch by the type code; a Quantity profile
                    # (SimpleQuantity, MoneyQuantity) keeps its rules but is named Quantity.
                    json_type = "Quantity" if code in ("SimpleQuantity", "MoneyQuantity") else code
                    json_name = base + (json_type[0].upper() + json_type[1:] if choice else "")
                    if choice and "." in code:
                        raise SystemExit("backbone in choice " + n + "." + leaf)
                    tgt = ", ".join(rs(x) for x in targets)
                    rows.append((json_name, f"ElementDef {{ name: {rs(json_name)}, choice: {rs(base if choice else '')}, min: {e['min']}, many: {str(e['many']).lower()}, prohibited: {str(e['max0']).lower()}, ty: TypeRef {{ name: {rs(code)}, targets: &[{tgt}] }}, binding: {b}, invariants: &[{invs}] }}"))
            rows.sort()
            nel += len(rows)
            tinv = ", ".join(f"&INVARIANTS[{inv_pos[k]}]" for k in t["invariants"])
            f.write(f"    TypeDef {{ name: {rs(n)}, kind: TypeKind::{t['kind']}, invariants: &[{tinv}], elements: &[\n")
            for _, r in rows:
                f.write(f"        {r},\n")
            f.write("    ] },\n")
        f.write("];\n")
    with open(os.path.join(out_dir, "value_sets.rs"), "w", encoding="utf-8") as f:
        f.write(header)
        f.write("use crate::structure::{ValueSetDef, ValueSetInclude};\n\n")
        f.write("/// Expansions of the value sets that R4 binds with strength required or extensible,\n")
        f.write("/// where the core definitions allow an expansion; codes sorted per system.\n")
        f.write("pub static VALUE_SETS: &[ValueSetDef] = &[\n")
        for url, exp in vs_rows:
            f.write(f"    ValueSetDef {{ url: {rs(url)}, includes: &[\n")
            for system in sorted(exp):
                codes = exp[system]
                if codes is None:
                    f.write(f"        ValueSetInclude {{ system: {rs(system)}, codes: None }},\n")
                else:
                    f.write(f"        ValueSetInclude {{ system: {rs(system)}, codes: Some(&[{', '.join(rs(c) for c in sorted(codes))}]) }},\n")
            f.write("    ] },\n")
        f.write("];\n")
    extensions = core_extensions(g)
    profiles = vital_signs_profiles(g, vs_ref)
    with open(os.path.join(out_dir, "profiles.rs"), "w", encoding="utf-8") as f:
        f.write(header)
        f.write("use crate::structure::{CoreExtension, VitalSignsComponent, VitalSignsProfile};\n\n")
        f.write("/// The extensions defined by the R4 core specification, sorted by URL, with the types\n")
        f.write("/// their value may have (empty for complex extensions, which have no value).\n")
        f.write("pub static CORE_EXTENSIONS: &[CoreExtension] = &[\n")
        for url, types, contexts in extensions:
            ctx = "None" if contexts is None else f"Some(&[{', '.join(rs(c) for c in contexts)}])"
            f.write(f"    CoreExtension {{ url: {rs(url)}, value_types: &[{', '.join(rs(t) for t in types)}], contexts: {ctx} }},\n")
        f.write("];\n\n")
        f.write("/// The core vital-signs profiles of R4 (the base profile first), as the facts their\n")
        f.write("/// differentials fix: the LOINC code, the UCUM units and the component slices.\n")
        f.write("pub static VITAL_SIGNS_PROFILES: &[VitalSignsProfile] = &[\n")
        for p in profiles:
            comps = ", ".join(
                f"VitalSignsComponent {{ code: {rs(c)}, units: &[{', '.join(rs(u) for u in us)}] }}" for c, us in p["components"]
            )
            code = f"Some({rs(p['code'])})" if p["code"] else "None"
            f.write(f"    VitalSignsProfile {{ url: {rs(p['url'])}, name: {rs(p['name'])}, loinc: {code}, units: &[{', '.join(rs(u) for u in p['units'])}], value_prohibited: {str(p['value_prohibited']).lower()}, components: &[{comps}] }},\n")
        f.write("];\n")
    print(f"{len(extensions)} core extensions, {len(profiles)} vital-signs profiles")
    print(f"{len(names)} types, {nel} elements, {len(g.invariants)} invariants, {len(vs_rows)} value sets expanded ({sum(1 for v in vs_index.values() if v is None)} not expandable)")


def core_extensions(g):
    out = []
    for e in g.load("extension-definitions.json")["entry"]:
        r = e["resource"]
        if r.get("resourceType") != "StructureDefinition":
            continue
        types = []
        for el in r["snapshot"]["element"]:
            if el["path"] == "Extension.value[x]" and el.get("max") != "0":
                types = [g.type_code(t) for t in el.get("type", [])]
        # Where the extension may be used: element contexts only (a FHIRPath or extension
        # context is not checked: None).
        ctx = r.get("context", [])
        contexts = None if not ctx or any(c.get("type") != "element" for c in ctx) else tuple(
            sorted(c["expression"] for c in ctx))
        out.append((r["url"], tuple(types), contexts))
    return sorted(set(out), key=lambda x: x[0])


def vital_signs_profiles(g, vs_ref):
    by_url = {}
    for e in g.load("profiles-others.json")["entry"]:
        r = e["resource"]
        if r.get("resourceType") == "StructureDefinition" and r.get("type") == "Observation":
            by_url[r["url"]] = r
    base = SD + "vitalsigns"
    names = [u for u, r in by_url.items() if u == base or r.get("baseDefinition") == base]
    out = []
    for url in sorted(names, key=lambda u: (u != base, u)):
        r = by_url[url]
        p = {"url": url, "name": r["name"], "code": None, "units": [], "value_prohibited": False, "components": []}
        comp = None
        for el in r["differential"]["element"]:
            path = el["path"]
            if path == "Observation.code.coding.code" and "fixedCode" in el:
                p["code"] = el["fixedCode"]
            elif path == "Observation.valueQuantity" and el.get("max") == "0":
                p["value_prohibited"] = True
            elif path == "Observation.valueQuantity.code":
                if "fixedCode" in el:
                    p["units"] = [el["fixedCode"]]
                elif el.get("binding", {}).get("valueSet"):
                    exp = g.expand(el["binding"]["valueSet"].split("|")[0]) or {}
                    p["units"] = sorted(set().union(*[c for c in exp.values() if c]))
            elif path == "Observation.component" and el.get("sliceName"):
                comp = [None, []]
                p["components"].append(comp)
            elif path == "Observation.component.code.coding.code" and comp is not None and "fixedCode" in el:
                comp[0] = el["fixedCode"]
            elif path == "Observation.component.valueQuantity.code" and comp is not None:
                if "fixedCode" in el:
                    comp[1] = [el["fixedCode"]]
        p["components"] = [(c, u) for c, u in p["components"] if c]
        if url == base:
            exp = g.expand("http://hl7.org/fhir/ValueSet/ucum-vitals-common") or {}
            p["units"] = sorted(set().union(*[c for c in exp.values() if c]))
        out.append(p)
    return out
