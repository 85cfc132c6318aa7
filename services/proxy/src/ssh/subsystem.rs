//! The Teleport proxy subsystem name, `proxy:HOST[:PORT][@CLUSTER]`.

/// A parsed `proxy:` subsystem request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyTarget {
    pub host: String,
    /// 0 when absent or empty: the node's own port.
    pub port: u16,
    /// Empty when absent: this proxy's cluster.
    pub cluster: String,
}

/// Parses a subsystem name; the error says what is wrong with it.
pub fn parse_proxy_subsystem(name: &str) -> Result<ProxyTarget, String> {
    let rest = name
        .strip_prefix("proxy:")
        .ok_or_else(|| format!("unknown subsystem {name:?}: this proxy serves only proxy:HOST:PORT@CLUSTER"))?;
    // The cluster follows the last '@'; hosts never contain one.
    let (target, cluster) = match rest.rsplit_once('@') {
        Some((t, c)) => (t, c.trim()),
        None => (rest, ""),
    };
    let bad = |why: &str| format!("bad subsystem {name:?}: {why} (expected proxy:HOST:PORT@CLUSTER)");
    let (host, port) = if let Some(inner) = target.strip_prefix('[') {
        // [IPv6]:PORT
        let (host, after) = inner.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        let port = match after {
            "" => "",
            p => p.strip_prefix(':').ok_or_else(|| bad("expected ':' after ']'"))?,
        };
        (host, port)
    } else {
        match target.split_once(':') {
            Some((h, p)) if p.contains(':') => {
                return Err(bad(&format!("{h}:{p} has too many ':'; write IPv6 addresses as [addr]")));
            }
            Some((h, p)) => (h, p),
            None => (target, ""),
        }
    };
    if host.is_empty() {
        return Err(bad("the host is empty"));
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("the host contains spaces or control characters"));
    }
    let port = match port.trim() {
        "" => 0,
        p => p.parse::<u16>().map_err(|_| bad(&format!("{p:?} is not a port number")))?,
    };
    Ok(ProxyTarget { host: host.to_string(), port, cluster: cluster.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, port: u16, cluster: &str) -> ProxyTarget {
        ProxyTarget { host: host.into(), port, cluster: cluster.into() }
    }

    #[test]
    fn full_and_partial_forms() {
        assert_eq!(parse_proxy_subsystem("proxy:host:22@cluster").unwrap(), t("host", 22, "cluster"));
        assert_eq!(parse_proxy_subsystem("proxy:host:@c").unwrap(), t("host", 0, "c"));
        assert_eq!(parse_proxy_subsystem("proxy:host").unwrap(), t("host", 0, ""));
        assert_eq!(parse_proxy_subsystem("proxy:host:0").unwrap(), t("host", 0, ""));
        assert_eq!(parse_proxy_subsystem("proxy:host@leaf.example.com").unwrap(), t("host", 0, "leaf.example.com"));
        assert_eq!(parse_proxy_subsystem("proxy:10.0.0.5:3022@").unwrap(), t("10.0.0.5", 3022, ""));
        assert_eq!(parse_proxy_subsystem("proxy:[::1]:3022@c").unwrap(), t("::1", 3022, "c"));
        assert_eq!(parse_proxy_subsystem("proxy:[::1]").unwrap(), t("::1", 0, ""));
    }

    #[test]
    fn bad_input_is_named() {
        let e = parse_proxy_subsystem("sftp").unwrap_err();
        assert!(e.contains("unknown subsystem \"sftp\""), "{e}");
        let e = parse_proxy_subsystem("proxy:").unwrap_err();
        assert!(e.contains("host is empty"), "{e}");
        let e = parse_proxy_subsystem("proxy::22@c").unwrap_err();
        assert!(e.contains("host is empty"), "{e}");
        let e = parse_proxy_subsystem("proxy:host:abc").unwrap_err();
        assert!(e.contains("\"abc\" is not a port number"), "{e}");
        let e = parse_proxy_subsystem("proxy:host:70000").unwrap_err();
        assert!(e.contains("not a port number"), "{e}");
        let e = parse_proxy_subsystem("proxy:a:b:c").unwrap_err();
        assert!(e.contains("too many ':'"), "{e}");
        let e = parse_proxy_subsystem("proxy:[::1").unwrap_err();
        assert!(e.contains("unclosed"), "{e}");
        let e = parse_proxy_subsystem("proxy:bad host:22").unwrap_err();
        assert!(e.contains("spaces"), "{e}");
    }
}
