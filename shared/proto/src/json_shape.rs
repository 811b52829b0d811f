//! Refuses JSON arrays where a request's schema expects an object, at any depth.
//!
//! serde accepts a sequence for a struct, by position (`[]` for a struct whose fields
//! are all optional, `["x", true]` for `{"id": "x", "force": true}`). No JSON client
//! means that, and a positional struct bypasses `deny_unknown_fields`. Serde has no
//! switch for it, so the JSON body is checked against the request type's own JSON
//! Schema (the one `$SRV.INFO` publishes) before it is decoded. Only this one shape
//! mismatch is looked for; every other mismatch is serde's to report.

use serde_json::Value;

/// Checks `value` against `schema` (a schemars root schema with `$defs`). The error
/// names the JSON path of the first array found where only an object fits.
pub fn refuse_positional_objects(schema: &Value, value: &Value) -> Result<(), String> {
    let mut path = String::from("$");
    check(schema, schema, value, &mut path)
}

/// Bounds `$ref` chains: a schema whose references loop is treated as "anything".
const MAX_REF_HOPS: usize = 32;

fn resolve<'s>(root: &'s Value, mut schema: &'s Value) -> Option<&'s Value> {
    for _ in 0..MAX_REF_HOPS {
        let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
            return Some(schema);
        };
        let pointer = reference.strip_prefix('#')?;
        schema = root.pointer(pointer)?;
    }
    None
}

/// Whether an array can match `schema` at all (ignoring its items).
fn allows_array(root: &Value, schema: &Value) -> bool {
    let Some(schema) = resolve(root, schema) else {
        return true;
    };
    let Some(object) = schema.as_object() else {
        // `true` or an unknown form: anything goes.
        return schema.as_bool() != Some(false);
    };
    for key in ["anyOf", "oneOf"] {
        if let Some(alternatives) = object.get(key).and_then(Value::as_array) {
            return alternatives.iter().any(|alt| allows_array(root, alt));
        }
    }
    if let Some(all) = object.get("allOf").and_then(Value::as_array) {
        return all.iter().all(|part| allows_array(root, part));
    }
    match object.get("type") {
        Some(Value::String(kind)) => kind == "array",
        Some(Value::Array(kinds)) => kinds.iter().any(|kind| kind == "array"),
        // No type: only a `properties` schema means an object.
        _ => !object.contains_key("properties"),
    }
}

/// Whether `value` has a JSON type `schema` allows and every field it requires.
fn could_match(root: &Value, schema: &Value, value: &Value) -> bool {
    let Some(object) = resolve(root, schema).and_then(Value::as_object) else {
        return true;
    };
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let type_fits =
        |declared: &Value| declared == kind || (declared == "number" && kind == "integer");
    let typed = match object.get("type") {
        Some(Value::Array(kinds)) => kinds.iter().any(type_fits),
        Some(declared) => type_fits(declared),
        None => true,
    };
    let required = object
        .get("required")
        .and_then(Value::as_array)
        .is_none_or(|names| {
            names
                .iter()
                .filter_map(Value::as_str)
                .all(|name| value.get(name).is_some())
        });
    typed && (!value.is_object() || required)
}

fn check(root: &Value, schema: &Value, value: &Value, path: &mut String) -> Result<(), String> {
    let Some(schema) = resolve(root, schema) else {
        return Ok(());
    };
    let Some(object) = schema.as_object() else {
        return Ok(());
    };
    if value.is_array() && !allows_array(root, schema) {
        return Err(format!(
            "{path}: expected a JSON object ({{…}}), not an array (fields by position are not accepted)"
        ));
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alternatives) = object.get(key).and_then(Value::as_array) {
            // The alternative the value is meant for (an enum's variant, `Some` of an
            // option): right type, required fields present. None fits: serde says why.
            return match alternatives
                .iter()
                .find(|alternative| could_match(root, alternative, value))
            {
                Some(alternative) => check(root, alternative, value, path),
                None => Ok(()),
            };
        }
    }
    if let Some(all) = object.get("allOf").and_then(Value::as_array) {
        for part in all {
            check(root, part, value, path)?;
        }
    }
    match value {
        Value::Object(fields) => {
            let properties = object.get("properties").and_then(Value::as_object);
            let additional = object.get("additionalProperties");
            for (name, field) in fields {
                let Some(field_schema) = properties.and_then(|p| p.get(name)).or(additional) else {
                    continue;
                };
                let len = path.len();
                path.push('.');
                path.push_str(name);
                let result = check(root, field_schema, field, path);
                path.truncate(len);
                result?;
            }
        }
        Value::Array(items) => {
            let positional = object.get("prefixItems").and_then(Value::as_array);
            let rest = object.get("items");
            for (index, item) in items.iter().enumerate() {
                let Some(item_schema) = positional.and_then(|p| p.get(index)).or(rest) else {
                    continue;
                };
                let len = path.len();
                path.push_str(&format!("[{index}]"));
                let result = check(root, item_schema, item, path);
                path.truncate(len);
                result?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemars::JsonSchema;
    use serde::Deserialize;

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Inner {
        a: Option<u32>,
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    enum Choice {
        Plain,
        Named { inner: Inner },
    }

    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Outer {
        id: String,
        inner: Option<Inner>,
        list: Vec<Inner>,
        tags: Vec<String>,
        map: std::collections::BTreeMap<String, Inner>,
        pair: Option<(String, u32)>,
        choice: Option<Choice>,
        raw: Option<serde_json::Value>,
    }

    fn check_outer(value: Value) -> Result<(), String> {
        let schema = schemars::schema_for!(Outer).to_value();
        refuse_positional_objects(&schema, &value)
    }

    #[test]
    fn objects_lists_tuples_and_free_values_pass() {
        let ok = serde_json::json!({
            "id": "x", "inner": {"a": 1}, "list": [{"a": 2}, {}], "tags": ["t"],
            "map": {"k": {"a": 3}}, "pair": ["p", 4], "choice": {"Named": {"inner": {}}},
            "raw": [1, [2]]
        });
        assert_eq!(check_outer(ok), Ok(()));
        assert_eq!(
            check_outer(serde_json::json!({"choice": "Plain", "inner": null})),
            Ok(())
        );
    }

    #[test]
    fn an_array_for_an_object_is_refused_at_any_depth_naming_the_path() {
        for (value, path) in [
            (serde_json::json!([]), "$:"),
            (serde_json::json!({"inner": []}), "$.inner:"),
            (serde_json::json!({"list": [{}, [7]]}), "$.list[1]:"),
            (serde_json::json!({"map": {"k": []}}), "$.map.k:"),
            (
                serde_json::json!({"choice": {"Named": {"inner": [1]}}}),
                "$.choice",
            ),
        ] {
            let err = check_outer(value.clone()).expect_err(&value.to_string());
            assert!(err.starts_with(path), "{value}: {err}");
            assert!(err.contains("not an array"), "{err}");
        }
    }

    #[test]
    fn a_looping_or_dangling_reference_is_not_a_crash() {
        let looping =
            serde_json::json!({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}});
        assert_eq!(
            refuse_positional_objects(&looping, &serde_json::json!([])),
            Ok(())
        );
        let dangling = serde_json::json!({"$ref": "#/$defs/missing"});
        assert_eq!(
            refuse_positional_objects(&dangling, &serde_json::json!([])),
            Ok(())
        );
    }
}
