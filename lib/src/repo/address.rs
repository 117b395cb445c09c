//! Where a repository is: a local path, an `sftp://` URL or an `s3://` URL.
//! docs/REPOSITORY.md lists the forms; anything else is a usage error.
//! Credentials never appear here: SSH takes them from its own configuration
//! and agent, S3 from the environment or the shared credentials file.

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
        let bad = |why: &str| Error::usage(format!("'{location}' is not a repository location: {why}"));
        if location.is_empty() {
            return Err(bad("it is empty"));
        }
        // Anything with "://" is a URL: a local path containing it needs a "./" in front.
        let Some((scheme, _)) = location.split_once("://").filter(|(scheme, _)| !scheme.contains('/')) else {
            return Ok(Address::Local(PathBuf::from(location)));
        };
        let url = url::Url::parse(location).map_err(|e| bad(&e.to_string()))?;
        if url.password().is_some() {
            return Err(bad("passwords and secret keys never go in a URL (see docs/REPOSITORY.md for where they go)"));
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
                if !url.username().is_empty() || url.port().is_some() {
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
                        ("endpoint", v) if v.starts_with("http://") || v.starts_with("https://") => {
                            s3.endpoint = Some(v.trim_end_matches('/').to_string())
                        }
                        ("endpoint", _) => return Err(bad("endpoint= must be an http:// or https:// URL")),
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
}
