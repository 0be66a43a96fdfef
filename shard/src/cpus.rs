//! CPU lists (`"0-3,8,10-11"`) and the CPUs this process may run on.

/// Parses a Linux-style CPU list. Ranges are inclusive; duplicates are an
/// error because they would pin two shards to one core by accident.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("invalid CPU list {text:?}: empty element"));
        }
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (parse_cpu(a, text)?, parse_cpu(b, text)?),
            None => {
                let c = parse_cpu(part, text)?;
                (c, c)
            }
        };
        if lo > hi {
            return Err(format!(
                "invalid CPU list {text:?}: range {part} runs backwards"
            ));
        }
        for c in lo..=hi {
            if cpus.contains(&c) {
                return Err(format!("invalid CPU list {text:?}: CPU {c} appears twice"));
            }
            cpus.push(c);
        }
    }
    Ok(cpus)
}

fn parse_cpu(s: &str, text: &str) -> Result<usize, String> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid CPU list {text:?}: {s:?} is not a CPU number"
        ));
    }
    s.parse()
        .map_err(|_| format!("invalid CPU list {text:?}: {s:?} is out of range"))
}

/// The CPUs in this process's affinity mask (what `taskset` or a cgroup
/// allows), in ascending order. Falls back to 0..available_parallelism when
/// the mask cannot be read.
pub fn allowed_cpus() -> Vec<usize> {
    let mut out = Vec::new();
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(line) = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")) {
            if let Some((_, list)) = line.split_once(':') {
                if let Ok(cpus) = parse_cpu_list(list.trim()) {
                    out = cpus;
                }
            }
        }
    }
    if out.is_empty() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        out = (0..n).collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists() {
        assert_eq!(parse_cpu_list("0-3").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_cpu_list("0,2, 4-5").unwrap(), vec![0, 2, 4, 5]);
        assert!(parse_cpu_list("").is_err());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("1,1").is_err());
        assert!(parse_cpu_list("a").is_err());
        assert!(parse_cpu_list("-1").is_err());
    }

    #[test]
    fn allowed_is_not_empty() {
        assert!(!allowed_cpus().is_empty());
    }
}
