//! The running server a logical restore loads into: refused while it holds
//! databases of its own, unless `--replace` drops those the backup holds
//! (never a system schema); then the verified dump is loaded.

use std::fs::File;
use std::path::Path;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::replay::Logging;
use crate::server::{user_databases, SYSTEM_SCHEMAS};

/// The role mariadb-dump's account statements create and drop around
/// themselves; one left by an interrupted load would make the next fail.
const DUMP_IMPORT_ROLE: &str = "mariadb_dump_import_role";

/// The target's own databases (all but the system schemas).
pub fn target_databases(client: &Client) -> Result<Vec<String>> {
    let databases = user_databases(client)?;
    if let Some(system) = databases.iter().find(|db| SYSTEM_SCHEMAS.contains(&db.as_str())) {
        return Err(Error::engine(format!("the target listed the system schema '{system}' as a user database")));
    }
    Ok(databases)
}

/// Refuses a target that holds databases of its own.
pub fn refuse_nonempty_target(client: &Client, databases: &[String]) -> Result<()> {
    if databases.is_empty() {
        return Ok(());
    }
    Err(Error::engine(format!(
        "{} already holds databases ({}); restore into an empty server, or pass --replace to drop those the \
         backup holds first",
        client.target(),
        databases.iter().map(|db| db.escape_debug().to_string()).collect::<Vec<_>>().join(", ")
    )))
}

/// Makes the target ready for a logical load: refuses one that holds
/// databases unless `replace`, which drops those the backup recreates
/// (`recreated`; every one when the backup does not record them) and, with
/// `drop_others`, the rest too. System schemas are never dropped. The drops
/// go into the target's binary log as `logging` says.
pub fn prepare_target(
    client: &Client,
    replace: bool,
    recreated: Option<&[String]>,
    drop_others: bool,
    logging: Logging,
) -> Result<()> {
    let unlogged = logging.prefix();
    let databases = target_databases(client)?;
    if !replace {
        refuse_nonempty_target(client, &databases)?;
    }
    for db in &databases {
        let shown = db.escape_debug();
        match recreated {
            Some(recreated) if !drop_others && !recreated.contains(db) => {
                crate::notice::notice(&format!(
                    "keeping database {shown}: the backup does not hold it (--drop-other-databases drops it)"
                ));
            }
            _ => {
                crate::notice::notice(&format!("dropping database {shown} (--replace)"));
                client.query(&format!("{unlogged}DROP DATABASE `{}`", db.replace('`', "``")))?;
            }
        }
    }
    client.query(&format!("{unlogged}DROP ROLE IF EXISTS {DUMP_IMPORT_ROLE}"))?;
    Ok(())
}

/// Loads a verified logical dump, spooled at `path`, into the server
/// (written to its binary log as `logging` says), then removes the file.
pub fn load_dump(client: &Client, path: &Path, logging: Logging) -> Result<()> {
    let dump = File::open(path).map_err(|e| Error::io(format!("cannot read '{}'", path.display()), e))?;
    let mut args = vec!["--binary-mode"];
    args.extend(logging.client_option());
    client
        .spawn("mariadb", &args, |c| {
            c.stdin(dump);
        })?
        .finish()?;
    std::fs::remove_file(path).map_err(|e| Error::io(format!("cannot remove '{}'", path.display()), e))
}
