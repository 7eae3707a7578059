//! The part of Go's text/template that `--format` uses in practice: `{{.Field.Sub}}`,
//! `{{json .Field}}`, `{{.}}`, `{{index .Map "key"}}`, `\t` and `\n` escapes, and a leading
//! `table ` (a header row from the field names).

use serde_json::Value;

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = v;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        cur = cur.get(part)?;
    }
    Some(cur)
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "<no value>".into(),
        Value::Array(a) => format!("[{}]", a.iter().map(plain).collect::<Vec<_>>().join(" ")),
        Value::Object(m) => format!(
            "map[{}]",
            m.iter()
                .map(|(k, v)| format!("{k}:{}", plain(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        other => other.to_string(),
    }
}

/// Evaluates one action (the text between `{{` and `}}`).
fn action(expr: &str, v: &Value) -> Result<String, String> {
    let words: Vec<&str> = expr.split_whitespace().collect();
    match words.as_slice() {
        [p] if p.starts_with('.') => Ok(lookup(v, p)
            .map(plain)
            .unwrap_or_else(|| "<no value>".into())),
        ["json", p] if p.starts_with('.') => Ok(lookup(v, p)
            .map(|x| x.to_string())
            .unwrap_or_else(|| "null".into())),
        ["index", p, key] if p.starts_with('.') => {
            let key = key.trim_matches('"');
            Ok(lookup(v, p)
                .and_then(|m| m.get(key))
                .map(plain)
                .unwrap_or_default())
        }
        ["upper", p] => Ok(lookup(v, p).map(plain).unwrap_or_default().to_uppercase()),
        ["lower", p] => Ok(lookup(v, p).map(plain).unwrap_or_default().to_lowercase()),
        ["len", p] if p.starts_with('.') => match lookup(v, p) {
            Some(Value::Array(a)) => Ok(a.len().to_string()),
            Some(Value::Object(m)) => Ok(m.len().to_string()),
            Some(Value::String(s)) => Ok(s.len().to_string()),
            Some(Value::Null) | None => Ok("0".into()),
            Some(x) => Err(format!("template: len of {x}")),
        },
        _ => Err(format!("template: unsupported action {{{{{expr}}}}}")),
    }
}

/// Renders `tmpl` for `v`.
pub fn render(tmpl: &str, v: &Value) -> Result<String, String> {
    let tmpl = tmpl.replace("\\t", "\t").replace("\\n", "\n");
    let mut out = String::new();
    let mut rest = tmpl.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("template: unclosed action in {tmpl:?}"))?;
        out.push_str(&action(after[..end].trim().trim_matches('-').trim(), v)?);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// For a `table …` format: the header (field names upper-cased with spaces), and the row
/// template.
pub fn table_header(tmpl: &str) -> Option<(String, String)> {
    let body = tmpl
        .strip_prefix("table")?
        .trim_start()
        .replace("\\t", "\t");
    let mut header = String::new();
    let mut rest = body.replace("\\t", "\t");
    let owned = rest.clone();
    rest.clear();
    let mut s = owned.as_str();
    while let Some(start) = s.find("{{") {
        header.push_str(&s[..start]);
        let after = &s[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let field = after[..end]
            .trim()
            .rsplit('.')
            .next()
            .unwrap_or("")
            .to_string();
        let mut name = String::new();
        let mut prev_upper = true;
        for c in field.chars() {
            if c.is_uppercase() && !prev_upper {
                name.push(' ');
            }
            prev_upper = c.is_uppercase();
            name.extend(c.to_uppercase());
        }
        header.push_str(&name);
        s = &after[end + 2..];
    }
    header.push_str(s);
    Some((header, body))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn renders_docker_style_formats() {
        let v = json!({"ID": "abc", "State": {"Status": "running", "Pid": 42}, "Labels": {"a": "b"}, "N": null});
        assert_eq!(
            super::render("{{.ID}}\\t{{.State.Status}}", &v).unwrap(),
            "abc\trunning"
        );
        assert_eq!(
            super::render("{{json .State}}", &v).unwrap(),
            r#"{"Pid":42,"Status":"running"}"#
        );
        assert_eq!(super::render("{{index .Labels \"a\"}}", &v).unwrap(), "b");
        assert_eq!(super::render("{{.Missing}}", &v).unwrap(), "<no value>");
        assert_eq!(super::render("{{len .Labels}}", &v).unwrap(), "1");
        assert!(super::render("{{if .ID}}x{{end}}", &v).is_err());
        assert!(super::render("{{.ID", &v).is_err());
        let (h, row) = super::table_header("table {{.ID}}\\t{{.CreatedAt}}").unwrap();
        assert_eq!(h, "ID\tCREATED AT");
        assert_eq!(row, "{{.ID}}\t{{.CreatedAt}}");
    }
}
