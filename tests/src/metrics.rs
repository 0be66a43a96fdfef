//! A strict parser for the Prometheus text exposition format 0.0.4 and
//! OpenMetrics 1.0 text, for checking `/metrics` output.
//!
//! Strict where scrapers are: metric and label names must be valid, label
//! values correctly escaped, every family's `# TYPE` must come before its
//! samples and appear once, families must not interleave, no series may
//! repeat, sample names must fit their family's type (`_total` for
//! counters, `_bucket`/`_sum`/`_count` for histograms), histogram buckets
//! must be cumulative with a `+Inf` bucket equal to `_count`, and
//! OpenMetrics text must end with `# EOF`.

use std::collections::{BTreeMap, HashSet};

/// One sample: name, labels (sorted), value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// Family name -> type.
    pub types: BTreeMap<String, String>,
}

impl Exposition {
    /// The value of the one sample named `name` whose labels include
    /// `labels`; panics if none or several match.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self.find(name, labels);
        assert_eq!(
            found.len(),
            1,
            "expected one sample {name}{labels:?}, found {found:?}"
        );
        found[0].value
    }

    /// Samples named `name` whose labels include `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// Sum of matching samples' values.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).iter().map(|s| s.value).sum()
    }
}

fn valid_metric_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => {
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c)) {
                return Err(format!("bad value {v:?}"));
            }
            v.parse::<f64>()
                .map_err(|e| format!("bad value {v:?}: {e}"))
        }
    }
}

/// Parses `{a="b",c="d"}` at the start of `s`; returns labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = &s[1..];
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without '='")?;
        let name = &rest[..eq];
        if !valid_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, '\n')) => return Err("raw newline in label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} repeated"));
        }
        rest = &rest[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.starts_with('}') {
            return Err("expected ',' or '}' after a label".into());
        }
    }
}

/// The family a sample belongs to, given the declared types.
fn family_of<'a>(
    name: &'a str,
    types: &BTreeMap<String, String>,
    openmetrics: bool,
) -> Option<(&'a str, &'static str)> {
    let candidates: [(&str, &str); 4] = [
        ("_total", "counter"),
        ("_bucket", "histogram"),
        ("_sum", "histogram"),
        ("_count", "histogram"),
    ];
    if let Some(t) = types.get(name) {
        // In 0.0.4 a counter is typed by its sample name (`x_total`).
        if t == "gauge" || (!openmetrics && t == "counter") {
            return Some((name, if t == "gauge" { "gauge" } else { "counter" }));
        }
    }
    for (suffix, kind) in candidates {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).map(String::as_str) == Some(kind) {
                return Some((base, kind));
            }
        }
    }
    None
}

/// Parses and checks an exposition; `openmetrics` selects the dialect.
pub fn parse(text: &str, openmetrics: bool) -> Result<Exposition, String> {
    let mut exp = Exposition::default();
    let mut seen_families: HashSet<String> = HashSet::new();
    let mut helps: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut series: HashSet<String> = HashSet::new();
    let mut eof = false;
    if !text.ends_with('\n') {
        return Err("the text must end with a newline".into());
    }
    for (no, line) in text.lines().enumerate() {
        let ctx = |e: String| format!("line {}: {e}: {line:?}", no + 1);
        if eof {
            return Err(ctx("content after # EOF".into()));
        }
        if line.is_empty() {
            if openmetrics {
                return Err(ctx("empty line".into()));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            if openmetrics && rest == " EOF" {
                eof = true;
                continue;
            }
            let mut parts = rest.trim_start().splitn(3, ' ');
            let kw = parts.next().unwrap_or("");
            let name = parts.next().unwrap_or("");
            let arg = parts.next().unwrap_or("");
            match kw {
                "TYPE" => {
                    if !valid_metric_name(name) {
                        return Err(ctx(format!("bad metric name {name:?}")));
                    }
                    if ![
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "untyped",
                        "unknown",
                    ]
                    .contains(&arg)
                    {
                        return Err(ctx(format!("bad type {arg:?}")));
                    }
                    if openmetrics && arg == "counter" && name.ends_with("_total") {
                        return Err(ctx("OpenMetrics counter family named with _total".into()));
                    }
                    if !seen_families.insert(name.to_string()) {
                        return Err(ctx(format!("family {name} declared twice or interleaved")));
                    }
                    exp.types.insert(name.to_string(), arg.to_string());
                    current = Some(name.to_string());
                }
                "HELP" if !valid_metric_name(name) || !helps.insert(name.to_string()) => {
                    return Err(ctx(format!("bad or repeated HELP for {name:?}")));
                }
                "HELP" => {}
                _ if openmetrics => return Err(ctx("unknown # line".into())),
                _ => {}
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| ctx("sample without a value".into()))?;
        let name = &line[..name_end];
        if !valid_metric_name(name) {
            return Err(ctx(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(ctx)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| ctx("expected a space before the value".into()))?;
        let value_text = rest.split(' ').next().unwrap_or("");
        let value = parse_value(value_text).map_err(ctx)?;
        let (family, kind) = family_of(name, &exp.types, openmetrics)
            .ok_or_else(|| ctx(format!("sample {name} has no matching # TYPE")))?;
        if current.as_deref() != Some(family) {
            return Err(ctx(format!("sample of {family} outside its family block")));
        }
        if kind == "counter" && !name.ends_with("_total") {
            return Err(ctx("counter sample without _total".into()));
        }
        if name.ends_with("_bucket") && !labels.contains_key("le") {
            return Err(ctx("bucket without le".into()));
        }
        if (kind == "counter" || name.ends_with("_bucket") || name.ends_with("_count"))
            && (value < 0.0 || value.is_nan())
        {
            return Err(ctx("negative or NaN count".into()));
        }
        let key = format!("{name}{labels:?}");
        if !series.insert(key) {
            return Err(ctx("series repeated".into()));
        }
        exp.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    if openmetrics && !eof {
        return Err("OpenMetrics text must end with # EOF".into());
    }
    check_histograms(&exp)?;
    Ok(exp)
}

fn check_histograms(exp: &Exposition) -> Result<(), String> {
    for (family, kind) in &exp.types {
        if kind != "histogram" {
            continue;
        }
        // Group buckets by their labels without `le`.
        let mut groups: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for s in exp
            .samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let mut l = s.labels.clone();
            let le = l.remove("le").unwrap_or_default();
            let le = parse_value(&le)?;
            groups
                .entry(format!("{l:?}"))
                .or_default()
                .push((le, s.value));
        }
        for (labels, buckets) in groups {
            let mut last = (f64::NEG_INFINITY, 0.0);
            for &(le, n) in &buckets {
                if le <= last.0 || n < last.1 {
                    return Err(format!(
                        "{family}{labels}: buckets not increasing at le={le}"
                    ));
                }
                last = (le, n);
            }
            if last.0 != f64::INFINITY {
                return Err(format!("{family}{labels}: no +Inf bucket"));
            }
            let count = exp
                .samples
                .iter()
                .find(|s| {
                    s.name == format!("{family}_count") && {
                        let mut l = s.labels.clone();
                        l.remove("le");
                        format!("{l:?}") == labels
                    }
                })
                .ok_or_else(|| format!("{family}{labels}: no _count"))?;
            if count.value != last.1 {
                return Err(format!(
                    "{family}{labels}: +Inf bucket {} != _count {}",
                    last.1, count.value
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catches_common_mistakes() {
        assert!(parse("# TYPE a counter\na_total 1\n", false).is_ok());
        assert!(parse("a_total 1\n", false).is_err(), "no TYPE");
        assert!(parse("# TYPE a_total counter\na_total 1\n", false).is_ok());
        assert!(
            parse("# TYPE a counter\na 1\n", false).is_err(),
            "counter without _total"
        );
        assert!(
            parse("# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n", false).is_err(),
            "repeat"
        );
        assert!(parse("# TYPE a gauge\na{x=\"a\nb\"} 1\n", false).is_err());
        assert!(parse("# TYPE a gauge\na 1\n", true).is_err(), "no EOF");
        assert!(parse("# TYPE a gauge\na 1\n# EOF\n", true).is_ok());
        let h = "# TYPE h histogram\nh_bucket{le=\"1.0\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1.0\nh_count 1\n";
        assert!(parse(h, false).is_err(), "non-cumulative buckets");
    }
}
