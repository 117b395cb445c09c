//! Where a repository is: a local path, an `sftp://` URL or an `s3://` URL.
//! docs/REPOSITORY.md lists the forms; anything else is a usage error.
//! Credentials never appear here: SSH takes them from its own configuration
//! and agent, S3 from the environment or the shared credentials file. A URL
//! that carries them is refused, and every message that quotes a location
//! shows it through [`redact_location`] (other texts through [`redact`]).

use std::path::PathBuf;

use crate::error::{Error, Result};

/// A parsed repository location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A directory on this machine.
    Local(PathBuf),
    /// A directory on an SSH server, reached through the `ssh` client.
    Sftp(SftpAddress),
    /// A bucket (and a prefix in it) on an S3-compatible service.
    S3(S3Address),
}

/// `sftp://[user@]host[:port]/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftpAddress {
    /// Login name; when absent the `ssh` client's configuration decides.
    pub user: Option<String>,
    /// Host name or address, as `ssh` resolves it (aliases from ~/.ssh/config work).
    pub host: String,
    /// TCP port; when absent the `ssh` client's configuration decides.
    pub port: Option<u16>,
    /// Absolute directory on the server.
    pub path: String,
}

/// `s3://bucket[/prefix][?endpoint=URL&region=NAME&addressing=path|virtual]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Address {
    /// The bucket, which must exist.
    pub bucket: String,
    /// The folder inside the bucket, without leading or trailing slashes ("" for the whole bucket).
    pub prefix: String,
    /// Service URL; None means AWS itself.
    pub endpoint: Option<String>,
    /// Signing region; None means `AWS_REGION`, else us-east-1.
    pub region: Option<String>,
    /// Bucket in the host name (`bucket.endpoint`) instead of the path (`endpoint/bucket`).
    pub virtual_host: bool,
}

impl Address {
    /// Parses a repository location as given on the command line.
    pub fn parse(location: &str) -> Result<Address> {
        let shown = redact_location(location);
        let bad = |why: &str| Error::usage(format!("'{shown}' is not a repository location: {why}"));
        if location.is_empty() {
            return Err(bad("it is empty"));
        }
        // Anything with "://" is a URL: a local path containing it needs a "./" in front.
        let Some((scheme, _)) = location.split_once("://").filter(|(scheme, _)| !scheme.contains('/')) else {
            return Ok(Address::Local(PathBuf::from(location)));
        };
        let url = url::Url::parse(location).map_err(|e| bad(&e.to_string()))?;
        if url.password().is_some() {
            return Err(bad(NO_CREDENTIALS));
        }
        if url.fragment().is_some() {
            return Err(bad("a URL for a repository has no #fragment"));
        }
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| bad("it names no host or bucket"))?;
        let path = percent_decode(url.path()).map_err(|why| bad(&why))?;
        match scheme {
            "sftp" => {
                if url.query().is_some() {
                    return Err(bad("sftp:// URLs take no options; configure ssh in ~/.ssh/config"));
                }
                if path.trim_matches('/').is_empty() {
                    return Err(bad("name a directory on the server, as in sftp://host/srv/backups"));
                }
                let user = Some(percent_decode(url.username()).map_err(|why| bad(&why))?).filter(|u| !u.is_empty());
                Ok(Address::Sftp(SftpAddress { user, host: host.to_string(), port: url.port(), path }))
            }
            "s3" => {
                if !url.username().is_empty() {
                    return Err(bad(NO_CREDENTIALS));
                }
                if url.port().is_some() {
                    return Err(bad("the part after s3:// is the bucket name; put the endpoint in ?endpoint="));
                }
                let mut s3 = S3Address {
                    bucket: host.to_string(),
                    prefix: path.trim_matches('/').to_string(),
                    endpoint: None,
                    region: None,
                    virtual_host: false,
                };
                for (key, value) in url.query_pairs() {
                    match (&*key, &*value) {
                        ("endpoint", v) => s3.endpoint = Some(check_endpoint(v).map_err(bad)?),
                        ("region", v) if !v.is_empty() => s3.region = Some(v.to_string()),
                        ("addressing", "path") => s3.virtual_host = false,
                        ("addressing", "virtual") => s3.virtual_host = true,
                        ("addressing", _) => return Err(bad("addressing= is 'path' or 'virtual'")),
                        (other, _) => {
                            return Err(bad(&format!("unknown option '{other}' (known: endpoint, region, addressing)")))
                        }
                    }
                }
                Ok(Address::S3(s3))
            }
            other => Err(bad(&format!("unknown scheme '{other}://' (use a path, sftp:// or s3://)"))),
        }
    }
}

/// Why a URL with a user name or password in it is refused.
const NO_CREDENTIALS: &str = "passwords and secret keys never go in a URL (see docs/REPOSITORY.md for where they go)";

/// Checks an S3 service URL (from `endpoint=` or the environment): `http://`
/// or `https://`, a host, and no user name or password. Returns it without
/// trailing slashes. The reason it is refused never quotes it.
pub fn check_endpoint(endpoint: &str) -> std::result::Result<String, &'static str> {
    const MALFORMED: &str = "endpoint= must be an http:// or https:// URL";
    if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
        return Err(MALFORMED);
    }
    let url = url::Url::parse(endpoint).map_err(|_| MALFORMED)?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the endpoint= URL has a user name or password; credentials never go in a URL (see docs/REPOSITORY.md for where they go)");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(MALFORMED);
    }
    Ok(endpoint.trim_end_matches('/').to_string())
}

/// `text` with the user information of every `scheme://user:password@host`
/// in it replaced by `***`, for messages (stderr ends up in cron mail and
/// journals). URLs nested in query values count, also percent-encoded at any
/// depth (`endpoint=http%3A%2F%2Fkey%3Asecret%40host`), and so do URLs that do
/// not parse: after each `://` everything up to the last `@` before the next
/// `://` is hidden, even past a `/`, `?` or `#` (a password may hold those
/// when nobody encoded it). Whitespace or a quote ends that stretch only
/// after a `/`, `?` or `#` (a host never holds them, a password may). So a
/// message may hide more than the user information (a path holding `@` is
/// hidden up to it). For a text that is one location, [`redact_location`]
/// is stricter.
pub fn redact(text: &str) -> String {
    hide(text, false)
}

/// A repository location as messages show it: when it holds a `://`,
/// everything from the first one to its last `@` (plain or percent-encoded
/// at any depth) is replaced by `***`, which covers the user information of
/// the location and of any URL nested in it, whatever characters a password
/// holds and whether or not it parses: `sftp://***@nas/srv`. A location
/// without an `@` after its `://` is shown as it is.
pub fn redact_location(location: &str) -> String {
    hide(location, true)
}

/// [`redact`] (`one_location` false) and [`redact_location`] (true).
fn hide(text: &str, one_location: bool) -> String {
    let bytes = text.as_bytes();
    // The text as characters seen through percent-encoding: (character, start, end).
    let mut units = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let (unit, len) = decoded_unit(&bytes[at..]);
        units.push((unit, at, at + len));
        at += len;
    }
    let separator =
        |k: usize| k + 2 < units.len() && units[k].0 == b':' && units[k + 1].0 == b'/' && units[k + 2].0 == b'/';
    let mut hidden: Vec<(usize, usize)> = Vec::new(); // byte ranges
    if one_location {
        let first = (0..units.len()).find(|&k| separator(k));
        let last_at = units.iter().rposition(|unit| unit.0 == b'@');
        if let (Some(first), Some(last_at)) = (first, last_at) {
            if last_at > first + 3 {
                hidden.push((units[first + 3].1, units[last_at].1));
            }
        }
    }
    let mut k = if one_location { units.len() } else { 0 };
    while k < units.len() {
        if !separator(k) {
            k += 1;
            continue;
        }
        let start = k + 3;
        let (mut end, mut last_at, mut past_host) = (start, None, false);
        while end < units.len() && !separator(end) {
            match units[end].0 {
                b'@' => last_at = Some(end),
                b'/' | b'?' | b'#' | b'\\' => past_host = true,
                c if past_host && (c.is_ascii_whitespace() || b"'\"`<>".contains(&c)) => break,
                _ => {}
            }
            end += 1;
        }
        if let Some(last_at) = last_at.filter(|&a| a > start) {
            hidden.push((units[start].1, units[last_at].1));
        }
        k = end;
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (from, to) in hidden {
        out.push_str(&text[copied..from]);
        out.push_str("***");
        copied = to;
    }
    out.push_str(&text[copied..]);
    out
}

/// The character at the start of `bytes` and how many bytes stand for it:
/// `%XX` is the byte it encodes, and `%25XX`, `%2525XX`, ... are too.
fn decoded_unit(bytes: &[u8]) -> (u8, usize) {
    let hex = |at: usize| -> Option<u8> {
        let pair = bytes.get(at..at + 2).filter(|pair| pair.iter().all(u8::is_ascii_hexdigit))?;
        u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()
    };
    if bytes[0] != b'%' {
        // A whole UTF-8 character, so ranges cut at character boundaries.
        let len = match bytes[0] {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return (bytes[0], len.min(bytes.len()));
    }
    let mut len = 1;
    let mut unit = b'%';
    while let Some(value) = hex(len) {
        len += 2;
        unit = value;
        if value != b'%' {
            break;
        }
    }
    (unit, len)
}

/// Decodes %XX escapes in a URL path.
fn percent_decode(path: &str) -> std::result::Result<String, String> {
    percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .map(|p| p.into_owned())
        .map_err(|_| "the path is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(location: &str) -> String {
        let err = Address::parse(location).unwrap_err();
        assert_eq!(err.kind().exit_code(), 2, "{location}");
        err.to_string()
    }

    #[test]
    fn local_paths_stay_paths() {
        assert_eq!(Address::parse("/srv/repo").unwrap(), Address::Local("/srv/repo".into()));
        assert_eq!(Address::parse("rel/a b").unwrap(), Address::Local("rel/a b".into()));
    }

    #[test]
    fn sftp_urls() {
        assert_eq!(
            Address::parse("sftp://backup@nas.example:2222/srv/back%20ups").unwrap(),
            Address::Sftp(SftpAddress {
                user: Some("backup".into()),
                host: "nas.example".into(),
                port: Some(2222),
                path: "/srv/back ups".into()
            })
        );
        let decoded = Address::parse("sftp://back%40up@nas.example/x").unwrap();
        assert!(matches!(decoded, Address::Sftp(SftpAddress { user: Some(u), .. }) if u == "back@up"));
        assert_eq!(Address::parse("./odd://dir").unwrap(), Address::Local("./odd://dir".into()));
        assert!(usage("sftp://nas.example/").contains("name a directory"));
        assert!(usage("sftp://u:pw@nas.example/x").contains("passwords"));
    }

    #[test]
    fn s3_urls() {
        assert_eq!(
            Address::parse("s3://bucket/a/b/?endpoint=http://127.0.0.1:9000/&region=eu-1").unwrap(),
            Address::S3(S3Address {
                bucket: "bucket".into(),
                prefix: "a/b".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: Some("eu-1".into()),
                virtual_host: false
            })
        );
        assert!(usage("s3://bucket?colour=blue").contains("unknown option 'colour'"));
        assert!(usage("s3://AKIA:secret@bucket").contains("passwords"));
        assert!(usage("s3://bucket?endpoint=ftp://x").contains("endpoint="));
        assert!(usage("ftp://host/x").contains("unknown scheme"));
    }

    #[test]
    fn credentials_are_refused_everywhere_a_url_is_accepted() {
        for location in [
            "sftp://backup:hunter2@nas.example/srv",
            "sftp://backup:hunter2@nas.example:2222/srv",
            "s3://AKIA:hunter2@bucket/x",
            "s3://hunter2@bucket/x",
            "s3://bucket/x?endpoint=http://AKIA:hunter2@127.0.0.1:9000",
            "s3://bucket/x?endpoint=https://hunter2@s3.example.net/",
            "s3://bucket/x?region=eu&endpoint=http%3A%2F%2FAKIA%3Ahunter2%40127.0.0.1%3A9000",
            "s3://bucket?endpoint=http://AKIA:hunter2@127.0.0.1:9000&region=eu",
        ] {
            let err = usage(location);
            assert!(err.contains("never go in a URL"), "{location}: {err}");
            assert!(!err.contains("hunter2"), "{location}: {err}");
        }
        // Refused for another reason, but still not echoed.
        for location in [
            "sftp://backup:hunter2/more@nas.example/srv",
            "sftp://backup:hunter2?x#y@nas.example/srv",
            "sftp://backup:correct horse hunter2@nas.example/srv",
            "s3://bucket?endpoint=http://AKIA:hunter2@&colour=blue",
            "s3://bucket?endpoint=ftp://AKIA:hunter2@host",
            "gopher://AKIA:hunter2@host/x",
            "sftp://u:hunter2@[::1/x",
        ] {
            let err = usage(location);
            assert!(!err.contains("hunter2"), "{location}: {err}");
        }
        assert_eq!(check_endpoint("http://127.0.0.1:9000/").unwrap(), "http://127.0.0.1:9000");
        assert!(check_endpoint("http://").is_err());
        assert!(check_endpoint("https://k@h").unwrap_err().contains("user name or password"));
    }

    #[test]
    fn redact_hides_user_information_and_nothing_else() {
        let cases = [
            ("sftp://backup:pw@nas/srv", "sftp://***@nas/srv"),
            ("sftp://backup@nas:22/srv", "sftp://***@nas:22/srv"),
            ("sftp://nas/srv/backups", "sftp://nas/srv/backups"),
            ("/srv/backups and more", "/srv/backups and more"),
            ("user@host: Permission denied", "user@host: Permission denied"),
            ("s3://b/p?endpoint=http://127.0.0.1:9000&region=x", "s3://b/p?endpoint=http://127.0.0.1:9000&region=x"),
            (
                "s3://b/p?endpoint=http://AKIA:pw@127.0.0.1:9000&region=x",
                "s3://b/p?endpoint=http://***@127.0.0.1:9000&region=x",
            ),
            ("s3://K:pw@b?endpoint=http://K:pw@h", "s3://***@b?endpoint=http://***@h"),
            // Percent-encoded in a query value, at any depth.
            ("s3://b?endpoint=http%3A%2F%2FK%3Apw%40h%3A9", "s3://b?endpoint=http%3A%2F%2F***%40h%3A9"),
            ("s3://b?endpoint=http%253a%252f%252fK%253Apw%2540h", "s3://b?endpoint=http%253a%252f%252f***%2540h"),
            // Passwords nobody encoded: '@', '/', '?', '#', spaces and quotes in them.
            ("sftp://u:p@ss@h/x", "sftp://***@h/x"),
            ("sftp://u:pa/ss@h/x", "sftp://***@h/x"),
            ("sftp://u:pa?s#s@h/x", "sftp://***@h/x"),
            ("sftp://u:correct horse 'battery@h/x", "sftp://***@h/x"),
            // In a message: the stretch ends at a space or quote once past the host.
            ("cannot read 'sftp://u@h/x': u@h: refused", "cannot read 'sftp://***@h/x': u@h: refused"),
            ("'sftp://u:pw@h/x' is not", "'sftp://***@h/x' is not"),
            ("two: http://a:b@c/ and https://d@e/f", "two: http://***@c/ and https://***@e/f"),
            // Nothing to hide, or malformed escapes.
            ("sftp://@h/x", "sftp://@h/x"),
            ("ends with ://", "ends with ://"),
            ("100%", "100%"),
            ("%zz%2://", "%zz%2://"),
            ("ünïcode://ü:ö@ä/é", "ünïcode://***@ä/é"),
        ];
        for (text, expected) in cases {
            assert_eq!(redact(text), expected, "{text}");
            assert_eq!(redact(expected), expected, "idempotent: {expected}");
        }
        // A path holding '@' is hidden up to it: more than needed.
        assert_eq!(redact("sftp://nas/srv/a@b"), "sftp://***@b");
        assert_eq!(redact("%+1://u@h"), "%+1://***@h");
    }

    #[test]
    fn redact_location_hides_everything_up_to_the_last_at() {
        let cases = [
            ("sftp://backup@nas:22/srv", "sftp://***@nas:22/srv"),
            ("sftp://nas/srv/backups", "sftp://nas/srv/backups"),
            ("/srv/a@b", "/srv/a@b"),
            ("./x://u:p@h/R", "./x://***@h/R"),
            ("s3://b/p?endpoint=http://127.0.0.1:9000", "s3://b/p?endpoint=http://127.0.0.1:9000"),
            ("s3://b/p?endpoint=http://K:pw@h:9&region=x", "s3://***@h:9&region=x"),
            ("s3://b?endpoint=http%3A%2F%2FK%3Apw%40h", "s3://***%40h"),
            // Whatever a password holds, nothing of it shows.
            ("sftp://u:p/a b@h/x", "sftp://***@h/x"),
            ("sftp://u:a 'b\" c://d@h/x", "sftp://***@h/x"),
            ("sftp://u:p@ss@h/x", "sftp://***@h/x"),
        ];
        for (location, expected) in cases {
            assert_eq!(redact_location(location), expected, "{location}");
            assert_eq!(redact_location(expected), expected, "idempotent: {expected}");
        }
    }
}
