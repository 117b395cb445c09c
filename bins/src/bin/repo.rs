//! `repo`: creates and administers repositories.

use std::io::Write;

use backpipe::cdc::ChunkSizes;
use backpipe::cli::{self, KeyArgs, NewKeyArgs, Selection};
use backpipe::repo::catalog;
use backpipe::repo::check::check;
use backpipe::repo::forget::{decide, named, Decision, Policy};
use backpipe::repo::listing::list;
use backpipe::repo::prune::{prune, storage_now};
use backpipe::repo::remote::describe_duration;
use backpipe::repo::Repository;
use backpipe::units::stored_time;
use backpipe::units::{parse_duration, parse_size, parse_time};
use clap::{Parser, Subcommand};

/// Create and look after backup repositories.
#[derive(Parser)]
#[command(name = "repo", version, after_help = AFTER_HELP)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a repository in an empty or new place, with a new random master
    /// key sealed under the given key file or passphrase.
    Init {
        /// Where to create it: a path, sftp://[user@]host[:port]/path, or
        /// s3://bucket[/prefix][?endpoint=URL&region=NAME&addressing=path|virtual]
        /// (S3 credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the
        /// shared credentials file; SSH from ~/.ssh/config or BACKPIPE_SFTP_IDENTITY).
        #[arg(env = "BACKPIPE_REPOSITORY")]
        repo: String,
        /// Smallest chunk of every backup in this repository.
        #[arg(long, value_name = "SIZE", default_value = "128K", value_parser = parse_size)]
        min_size: usize,
        /// Average chunk. Smaller chunks store small changes in less space and
        /// cost more index entries; 512K stores a 1% change of scattered
        /// writes in about 5% of the data's compressed size.
        #[arg(long, value_name = "SIZE", default_value = "512K", value_parser = parse_size)]
        avg_size: usize,
        /// Largest chunk.
        #[arg(long, value_name = "SIZE", default_value = "2M", value_parser = parse_size)]
        max_size: usize,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// List snapshots, oldest first. A snapshot whose summary cannot be read
    /// or does not make sense (a start time that is not a time, a host name
    /// with control characters) is listed, whatever the filters, as `ID
    /// damaged: REASON` (with --json {"snapshot": ID, "damaged": REASON}),
    /// after the others, and the command then exits with status 4: run `repo
    /// check`, and `repo forget R ID` to remove it. Snapshots whose host's
    /// clock was ahead of the storage's or behind it are warned about on
    /// stderr. Headers are read several at a time, and cached in
    /// ~/.cache/backpipe (each checked against its name when used).
    Snapshots {
        /// The repository.
        #[arg(env = "BACKPIPE_REPOSITORY")]
        repo: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        select: Selection,
        /// Only backups of this kind (full, incremental, ...).
        #[arg(long)]
        kind: Option<String>,
        /// Only backups started at or after this time (`2026-11-21 10:00` local, or RFC 3339).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only backups started at or before this time.
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Remove snapshots no retention rule keeps, or the snapshots named by ID.
    /// Frees no space by itself: `repo prune` does.
    ///
    /// Rules apply per history: the backups of one host, engine and source.
    /// A kept backup keeps what restoring it needs (its full, the
    /// differential and the log chain between, followed by the links each
    /// backup records), and --keep-within keeps what restoring to any
    /// instant in the window needs, the full and logs from before the window
    /// that its first instant needs included.
    ///
    /// Rules never remove a snapshot whose summary cannot be read (damaged):
    /// it is named on stderr, the rules apply to the readable ones, and the
    /// command exits with status 4 at the end. To remove a damaged snapshot
    /// after `repo check`, name it: `repo forget R ID`.
    ///
    /// Rules go by two clocks and keep what either keeps: each backup's time
    /// by its host (when it started) and by the storage (when it received
    /// the snapshot), so a host whose clock is wrong never gets a fresh backup
    /// removed; snapshots whose clocks disagree are warned about.
    ///
    /// Unless --dry-run, it then writes a catalogue of every snapshot header
    /// and index (catalog/), from which a machine with an empty cache lists
    /// and restores in a few requests.
    Forget {
        /// The repository (left out when BACKPIPE_REPOSITORY names it), then
        /// the snapshots to remove exactly (IDs or unambiguous ID prefixes, see
        /// `repo snapshots`), damaged ones included, instead of applying rules.
        #[arg(value_name = "REPO|ID")]
        words: Vec<String>,
        /// Keep the newest N.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_last: usize,
        /// Keep the newest in each of the last N hours with backups.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_hourly: usize,
        /// Keep the newest in each of the last N days with backups.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_daily: usize,
        /// Keep the newest in each of the last N weeks with backups.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_weekly: usize,
        /// Keep the newest in each of the last N months with backups.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_monthly: usize,
        /// Keep the newest in each of the last N years with backups.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_yearly: usize,
        /// Keep everything started or received within this long (90m, 36h,
        /// 14d, 8w, 1y; at most 1000y) before the storage's present time (read
        /// from a probe object written and removed, also with --dry-run):
        /// the point-in-time window.
        #[arg(long, value_name = "DURATION")]
        keep_within: Option<String>,
        #[command(flatten)]
        select: Selection,
        /// Show what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// One JSON object per snapshot on stdout ({"id", "keep", "reasons"},
        /// and "damaged" with the reason for a snapshot that cannot be read).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Reclaim space: mark packs no snapshot needs (and packs holding only
    /// copies of chunks other packs keep), and delete packs marked longer ago
    /// than the grace period. Ages are judged by the storage's own clock, never
    /// by this host's. Safe while backups run: a backup that takes longer than
    /// the grace period and needs a deleted pack fails and stores nothing.
    Prune {
        /// The repository.
        #[arg(env = "BACKPIPE_REPOSITORY")]
        repo: String,
        /// How long a pack stays marked before it is deleted (90m, 24h, 7d),
        /// by the storage's clock. Longer than any backup runs, and than any
        /// prune takes to delete.
        #[arg(long, value_name = "DURATION", default_value = "24h")]
        grace: String,
        /// Show what would be done, change nothing (but a small probe object
        /// written and removed to read the storage's clock).
        #[arg(long)]
        dry_run: bool,
        /// The report as one JSON object on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// Manage the keys that open the repository.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Verify the repository: indexes, packs and snapshots; with --read-data,
    /// every stored chunk is read back, decrypted and checked against its ID.
    ///
    /// A chunk copy that fails (forged by a write-only key, or damaged) is
    /// quarantined (`quarantine/` in the repository): new backups store that
    /// chunk again instead of referring to it, and `fetch` reads another copy.
    /// It is a problem when found, and later while a snapshot needs the chunk
    /// and no good copy is stored.
    /// Safe beside backups and `repo prune`: packs prune deletes meanwhile are
    /// not reported as missing.
    Check {
        /// The repository.
        #[arg(env = "BACKPIPE_REPOSITORY")]
        repo: String,
        /// Read and verify every byte of every pack.
        #[arg(long)]
        read_data: bool,
        /// The report as one JSON object on stdout (problems included).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        keys: KeyArgs,
    },
}

#[derive(Subcommand)]
enum KeyAction {
    /// Add a key file or passphrase that opens the repository (open it with an existing one).
    Add {
        /// The repository.
        #[arg(env = "BACKPIPE_REPOSITORY")]
        repo: String,
        /// The new key may only ship new backups (with deduplication): it
        /// cannot read, fetch, decrypt, check, forget, prune or manage keys.
        /// For backup hosts; see docs/SECURITY.md.
        #[arg(long)]
        write_only: bool,
        #[command(flatten)]
        new: NewKeyArgs,
        #[command(flatten)]
        keys: KeyArgs,
    },
    /// List the key slots: name, kind and access (needs no key).
    List {
        /// The repository.
        #[arg(env = "BACKPIPE_REPOSITORY")]
        repo: String,
    },
    /// Remove a key slot (open the repository with another, full key).
    ///
    /// A full key always remains: if the slot that opened the repository for
    /// this run was removed meanwhile (by another `repo key remove`), the
    /// removed slot is put back and the command fails (exit 1).
    Remove {
        /// The repository (left out when BACKPIPE_REPOSITORY names it), then
        /// the slot's name, from `repo key list`.
        #[arg(value_name = "REPO|SLOT", num_args = 1..=2, required = true)]
        words: Vec<String>,
        #[command(flatten)]
        keys: KeyArgs,
    },
}

const AFTER_HELP: &str = concat!(
    "\
Example:
  keygen backup.key && repo init /backups --key-file backup.key
  dump-files /srv | chunk --repo /backups --key-file backup.key | squeeze \\
      | encrypt --repo /backups --key-file backup.key | ship /backups --key-file backup.key
  repo snapshots /backups --key-file backup.key

",
    backpipe::storage_limits_help!(),
    "

Exit status: 0 success, 1 error, 2 usage or key, 4 check found problems, or
snapshots or forget met a snapshot that cannot be read (damaged)."
);

fn main() {
    let args = cli::parse::<Args>();
    cli::main("repo", || match args.command {
        Command::Init { repo, min_size, avg_size, max_size, keys } => {
            let sizes = ChunkSizes { min: min_size, avg: avg_size, max: max_size };
            let config = Repository::init(&repo, &cli::require_secret(&keys)?, sizes)?;
            let shown = backpipe::repo::address::redact_location(&repo);
            cli::say(&format!("repo: created repository {} at {shown}", config.id));
            Ok(())
        }
        Command::Snapshots { repo, json, select, kind, since, until, keys } => {
            let filter = select.filter();
            let since = since.as_deref().map(parse_time).transpose()?;
            let until = until.as_deref().map(parse_time).transpose()?;
            let repo = cli::open_repo(&repo, &keys)?;
            let listing = list(&repo)?;
            for warning in listing.clock_warnings(chrono::Utc::now()) {
                cli::say(&format!("repo snapshots: warning: {warning}"));
            }
            let mut out = std::io::stdout().lock();
            for (id, s) in &listing.readable {
                // Listed summaries have a valid start time (a snapshot whose has not is damaged).
                let started = stored_time(&s.begin.started);
                let wanted = filter.matches(s)
                    && kind.as_ref().is_none_or(|k| *k == s.begin.kind)
                    && since.is_none_or(|t| started.is_some_and(|started| started >= t))
                    && until.is_none_or(|t| started.is_some_and(|started| started <= t));
                if !wanted {
                    continue;
                }
                let line = if json {
                    let mut value = serde_json::to_value(s).expect("summaries serialize");
                    value["snapshot"] = serde_json::json!(id);
                    value.to_string()
                } else {
                    let changed = match s.changed {
                        0 => String::new(),
                        n => format!("  ({n} changed while read)"),
                    };
                    format!(
                        "{id}  {}  {:<10} {:<12} {:<8} {:>6} entries {:>14} bytes{changed}",
                        s.begin.started, s.begin.host, s.begin.engine, s.begin.kind, s.entries, s.bytes
                    )
                };
                writeln!(out, "{line}").map_err(|e| backpipe::Error::io("cannot write the list", e))?;
            }
            // Their host, engine and time are unknown: listed whatever the filters.
            for damaged in &listing.damaged {
                let line = if json {
                    serde_json::json!({"snapshot": damaged.id, "damaged": damaged.reason}).to_string()
                } else {
                    format!("{}  damaged: {}", damaged.id, damaged.reason)
                };
                writeln!(out, "{line}").map_err(|e| backpipe::Error::io("cannot write the list", e))?;
            }
            match listing.damaged.len() {
                0 => Ok(()),
                1 => Err(backpipe::Error::integrity("1 snapshot cannot be read; run `repo check`")),
                n => Err(backpipe::Error::integrity(format!("{n} snapshots cannot be read; run `repo check`"))),
            }
        }
        Command::Forget {
            words,
            keep_last,
            keep_hourly,
            keep_daily,
            keep_weekly,
            keep_monthly,
            keep_yearly,
            keep_within,
            select,
            dry_run,
            json,
            keys,
        } => {
            let policy = Policy {
                last: keep_last,
                hourly: keep_hourly,
                daily: keep_daily,
                weekly: keep_weekly,
                monthly: keep_monthly,
                yearly: keep_yearly,
                within: keep_within.as_deref().map(parse_duration).transpose()?,
            };
            let (repo, ids) = cli::split_repository(&words)?;
            let rules = policy.last + policy.hourly + policy.daily + policy.weekly + policy.monthly + policy.yearly > 0
                || policy.within.is_some()
                || select.host.is_some()
                || select.engine.is_some()
                || select.source.is_some();
            if !ids.is_empty() && rules {
                return Err(backpipe::Error::usage(
                    "snapshot IDs cannot be used with rules (--keep-*, --host, --engine, --source): name the \
                     snapshots to remove, or give rules",
                ));
            }
            let repo = cli::open_repo(&repo, &keys)?;
            let listing = list(&repo)?;
            let (decisions, left_damaged) = if ids.is_empty() {
                let filter = select.filter();
                let candidates: Vec<_> = listing.readable.iter().filter(|(_, s)| filter.matches(s)).cloned().collect();
                // --keep-within counts back from the storage's present time, not this host's.
                let local = chrono::Utc::now();
                let now = match policy.within {
                    Some(_) => storage_now(repo.storage())?,
                    None => local,
                };
                let mut warnings = listing.clock_warnings(now);
                let off = local - now;
                if off.abs() > chrono::Duration::minutes(5) {
                    let by = describe_duration(off.abs().to_std().unwrap_or_default());
                    let way = if off > chrono::Duration::zero() { "ahead of" } else { "behind" };
                    warnings.push(format!(
                        "this host's clock is {by} {way} the storage's; --keep-within counts back from the storage's"
                    ));
                }
                for warning in warnings {
                    cli::say(&format!("repo forget: warning: {warning}"));
                }
                let mut decisions = decide(&candidates, &listing.storage_times, &policy, now)?;
                // Rules never remove what they cannot read.
                for damaged in &listing.damaged {
                    cli::say(&format!(
                        "repo forget: snapshot {} cannot be read ({}); no rule removes it: run `repo check`, \
                         then `repo forget REPO {}` removes it",
                        damaged.id, damaged.reason, damaged.id
                    ));
                    decisions.push(Decision {
                        id: damaged.id.clone(),
                        keep: true,
                        reasons: vec!["damaged".into()],
                        damaged: Some(damaged.reason.clone()),
                    });
                }
                (decisions, listing.damaged.len())
            } else {
                (named(&listing, &ids)?, 0)
            };
            let mut out = std::io::stdout().lock();
            let mut removed = 0;
            for decision in decisions {
                if !decision.keep {
                    removed += 1;
                    if !dry_run {
                        repo.storage().remove(&format!("snapshots/{}", decision.id))?;
                    }
                }
                let line = match (json, decision.keep, &decision.damaged) {
                    (true, _, _) => serde_json::to_string(&decision).expect("decisions serialize"),
                    (false, true, Some(why)) => format!("keep   {}  (damaged: {why})", decision.id),
                    (false, true, None) => format!("keep   {}  ({})", decision.id, decision.reasons.join(", ")),
                    (false, false, Some(why)) => format!("remove {}  (damaged: {why})", decision.id),
                    (false, false, None) => format!("remove {}", decision.id),
                };
                writeln!(out, "{line}").map_err(|e| backpipe::Error::io("cannot write the list", e))?;
            }
            let verb = if dry_run { "would remove" } else { "removed" };
            cli::say(&format!("repo forget: {verb} {removed} snapshots; run `repo prune` to free their space"));
            if !dry_run {
                // Only a faster way for new machines to read what the storage holds: a failure changes nothing else.
                if let Err(e) = catalog::refresh(&repo) {
                    cli::say(&format!("repo forget: warning: no new catalogue was written: {e}"));
                }
            }
            match left_damaged {
                0 => Ok(()),
                n => Err(backpipe::Error::integrity(format!(
                    "{n} snapshot{} cannot be read and {} left alone; run `repo check`",
                    if n == 1 { "" } else { "s" },
                    if n == 1 { "was" } else { "were" }
                ))),
            }
        }
        Command::Prune { repo, grace, dry_run, json, keys } => {
            let repo = cli::open_repo(&repo, &keys)?;
            let report = prune(&repo, parse_duration(&grace)?, dry_run)?;
            if json {
                print_json(&report)?;
            }
            if report.clock_offset_seconds.abs() > 300 {
                let off = report.clock_offset_seconds.unsigned_abs();
                cli::say(&format!(
                    "repo prune: this host's clock is {} {} the storage's; ages are judged by the storage's clock alone",
                    if off >= 5400 { format!("{} h", (off + 1800) / 3600) } else { format!("{} min", (off + 30) / 60) },
                    if report.clock_offset_seconds > 0 { "ahead of" } else { "behind" }
                ));
            }
            if report.future_marks > 0 {
                cli::say(&format!(
                    "repo prune: {} marks were dated after the storage's present time (its clock went back, or they \
                     were changed); they are dated anew, so their grace period starts now",
                    report.future_marks
                ));
            }
            let mut extra = String::new();
            for (count, what) in [
                (
                    report.duplicates,
                    "of the packs marked, waiting or deleted hold only copies of chunks other packs keep",
                ),
                (report.stale_marks, "marks of packs that no longer exist removed (left by an interrupted prune)"),
                (report.stale_records, "deletion records of interrupted prunes removed"),
            ] {
                if count > 0 {
                    extra.push_str(&format!("; {count} {what}"));
                }
            }
            cli::say(&format!(
                "repo prune: {}{} packs marked, {} deleted ({} bytes), {} waiting out the grace period, {} back in use{extra}",
                if dry_run { "(dry run) " } else { "" },
                report.marked,
                report.deleted,
                report.freed_bytes,
                report.waiting,
                report.unmarked
            ));
            match report.quarantined {
                0 => Ok(()),
                n => Err(backpipe::Error::integrity(format!(
                    "{n} chunk copies kept in place of duplicates did not verify (forged by a write-only key, or \
                     damaged): they are quarantined and their duplicates stay; run `repo check --read-data`"
                ))),
            }
        }
        Command::Key { action: KeyAction::Add { repo, write_only, new, keys } } => {
            let repo = cli::open_repo(&repo, &keys)?;
            let source = new.source().expect("clap requires one new key option");
            let name = repo.add_key(&source.load()?, write_only)?;
            cli::say(&format!("repo: added {} key slot {name}", if write_only { "write-only" } else { "full" }));
            Ok(())
        }
        Command::Key { action: KeyAction::List { repo } } => {
            let mut out = std::io::stdout().lock();
            for (name, kind, access) in Repository::key_slots(&repo)? {
                writeln!(out, "{name}  {kind}  {access}")
                    .map_err(|e| backpipe::Error::io("cannot write the list", e))?;
            }
            Ok(())
        }
        Command::Key { action: KeyAction::Remove { words, keys } } => {
            let (repo, rest) = cli::split_repository(&words)?;
            let [slot] = rest.as_slice() else {
                return Err(backpipe::Error::usage("name the repository and the key slot to remove"));
            };
            cli::open_repo(&repo, &keys)?.remove_key(slot)?;
            cli::say(&format!("repo: removed key slot {slot}"));
            Ok(())
        }
        Command::Check { repo, read_data, json, keys } => {
            let repo = cli::open_repo(&repo, &keys)?;
            let report = check(&repo, read_data)?;
            if json {
                print_json(&report)?;
            }
            for problem in &report.problems {
                cli::say(&format!("repo check: {problem}"));
            }
            cli::say(&format!(
                "repo check: {} snapshots, {} packs, {} chunks{}{}{}; {}",
                report.snapshots,
                report.packs,
                report.chunks,
                if report.unindexed_packs + report.unneeded_packs > 0 {
                    format!(
                        ", {} packs no snapshot needs (or holding only copies) and {} left unindexed by interrupted \
                         ships or prunes (harmless; `repo prune` reclaims them)",
                        report.unneeded_packs, report.unindexed_packs
                    )
                } else {
                    String::new()
                },
                if report.stale_marks > 0 {
                    format!(
                        ", {} marks of packs that no longer exist (left by an interrupted prune; harmless, the next \
                         `repo prune` removes them)",
                        report.stale_marks
                    )
                } else {
                    String::new()
                },
                match report.quarantined {
                    0 => String::new(),
                    n => format!(
                        ", {n} chunk copies quarantined as forged or damaged (never deduplicated against; fetch \
                         reads another copy)"
                    ),
                },
                if report.problems.is_empty() {
                    "no problems found".to_string()
                } else {
                    format!("{} problems", report.problems.len())
                }
            ));
            if report.problems.is_empty() {
                Ok(())
            } else {
                Err(backpipe::Error::integrity(format!("{} problems found", report.problems.len())))
            }
        }
    })
}

/// Writes a report as one line of JSON to stdout, for scripts.
fn print_json(report: &impl serde::Serialize) -> backpipe::Result<()> {
    let line = serde_json::to_string(report).expect("reports serialize");
    writeln!(std::io::stdout().lock(), "{line}").map_err(|e| backpipe::Error::io("cannot write the report", e))
}
