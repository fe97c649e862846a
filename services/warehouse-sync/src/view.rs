//! The warehouse's flat tables: one per SQL on FHIR v2 ViewDefinition, evaluated by
//! `trialbridge-views` (the whole specification, on the FHIRPath engine validation and search
//! use). The study's views are built in; a warehouse team adds its own as ViewDefinition JSON
//! files in a directory (`TRIALBRIDGE_VIEWS_DIR`), which the sync picks up while it runs.

use std::path::Path;

use serde_json::Value;
use trialbridge_views::{ViewDefinition, ViewError};

/// A flat table defined by a ViewDefinition.
#[derive(Debug, Clone)]
pub struct View {
    /// The view's name; the table is `view_<name>`.
    pub name: String,
    /// The resource type it reads.
    pub resource: String,
    /// Its columns.
    pub columns: Vec<Column>,
    /// The definition as read (compared to know when a view changed).
    pub text: String,
    definition: ViewDefinition,
}

/// One column of a view's table.
#[derive(Debug, Clone)]
pub struct Column {
    /// Column name (letters, digits and `_`: checked by the ViewDefinition parser, so safe in
    /// SQL).
    pub name: String,
    /// The PostgreSQL type of its values.
    pub sql_type: &'static str,
}

fn sql_type(c: &trialbridge_views::Column) -> &'static str {
    if c.collection {
        return "jsonb";
    }
    match c.ty.as_deref() {
        Some("integer" | "positiveInt" | "unsignedInt" | "integer64") => "bigint",
        Some("decimal") => "numeric",
        Some("boolean") => "boolean",
        _ => "text",
    }
}

impl View {
    /// Reads a ViewDefinition; a warehouse table needs its `name`.
    pub fn parse(def: &Value) -> Result<View, String> {
        let definition = ViewDefinition::parse(def).map_err(|e| e.to_string())?;
        let name = definition
            .name
            .clone()
            .ok_or("name: a warehouse view needs a name (its table is view_<name>)")?;
        let columns = definition
            .columns()
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                sql_type: sql_type(c),
            })
            .collect();
        Ok(View {
            name,
            resource: definition.resource.clone(),
            columns,
            text: def.to_string(),
            definition,
        })
    }

    /// The rows of one resource, each a text per column (`None` for null).
    pub fn rows(&self, resource: &Value) -> Result<Vec<Vec<Option<String>>>, ViewError> {
        Ok(self
            .definition
            .rows(resource)?
            .into_iter()
            .map(|row| row.iter().map(trialbridge_views::cell_text).collect())
            .collect())
    }
}

/// The study's views.
pub fn study_views() -> Result<Vec<View>, String> {
    trialbridge_study::VIEWS
        .iter()
        .map(|(file, text)| {
            let v: Value = serde_json::from_str(text).map_err(|e| format!("{file}: {e}"))?;
            View::parse(&v).map_err(|e| format!("{file}: {e}"))
        })
        .collect()
}

/// The study's views and those of `dir` (every `*.json`, in name order). A file that is not a
/// valid view is reported with its error and left out, so that one bad file does not stop the
/// warehouse; a name used twice is an error of the later file.
pub fn all_views(dir: Option<&Path>) -> (Vec<View>, Vec<String>) {
    let mut views = study_views().expect("the study's views are valid (tested)");
    let mut errors = Vec::new();
    let Some(dir) = dir else {
        return (views, errors);
    };
    let mut files: Vec<_> = match std::fs::read_dir(dir) {
        Ok(d) => d
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect(),
        Err(e) => {
            errors.push(format!("{}: {e}", dir.display()));
            return (views, errors);
        }
    };
    files.sort();
    for f in files {
        let parsed = std::fs::read_to_string(&f)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<Value>(&t).map_err(|e| e.to_string()))
            .and_then(|v| View::parse(&v));
        match parsed {
            Ok(v) if views.iter().any(|w| w.name == v.name) => errors.push(format!(
                "{}: a view named {} exists already",
                f.display(),
                v.name
            )),
            Ok(v) => views.push(v),
            Err(e) => errors.push(format!("{}: {e}", f.display())),
        }
    }
    (views, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_study_views_read_and_give_rows() {
        let views = study_views().unwrap();
        assert_eq!(views.len(), 5);
        let obs = views.iter().find(|v| v.name == "observation").unwrap();
        let o = json!({"resourceType": "Observation", "id": "bmi", "status": "final",
            "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy", "valueReference": {"reference": "ResearchStudy/mesemcart-site-01"}}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "39156-5"}, {"system": "x", "code": "y"}]},
            "subject": {"reference": "Patient/p"}, "effectiveDateTime": "2026-03-02",
            "valueQuantity": {"value": 27.4, "code": "kg/m2"}});
        let rows = obs.rows(&o).unwrap();
        assert_eq!(rows.len(), 1);
        let col = |n: &str| rows[0][obs.columns.iter().position(|c| c.name == n).unwrap()].clone();
        assert_eq!(col("id").as_deref(), Some("Observation/bmi"));
        assert_eq!(col("code").as_deref(), Some("39156-5"));
        assert_eq!(col("value").as_deref(), Some("27.4"));
        assert_eq!(col("unit").as_deref(), Some("kg/m2"));
        assert_eq!(col("time").as_deref(), Some("2026-03-02"));
        assert_eq!(col("value_code"), None);
        assert_eq!(
            col("site_study").as_deref(),
            Some("ResearchStudy/mesemcart-site-01")
        );
    }

    #[test]
    fn a_directory_adds_views_and_reports_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.json"),
            json!({"name": "bp", "resource": "Observation", "select": [{"forEach": "component", "column": [{"name": "code", "path": "code.coding.first().code"}]}]}).to_string(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.json"),
            r#"{"name": "x", "resource": "Patient", "select": [{"forEach": 1}]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("c.json"), json!({"name": "subject", "resource": "Patient", "select": [{"column": [{"name": "a", "path": "id"}]}]}).to_string()).unwrap();
        let (views, errors) = all_views(Some(dir.path()));
        assert_eq!(views.len(), 6);
        assert!(views.iter().any(|v| v.name == "bp"));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("select[0].forEach"), "{errors:?}");
        assert!(
            errors[1].contains("a view named subject exists already"),
            "{errors:?}"
        );
    }
}
