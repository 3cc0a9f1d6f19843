//! The clients' test suites (`clients/php`, `clients/js`), run against the broker binary
//! `cargo test` just built and the example plugins: real PHP, real Node.js and a real
//! headless Chromium, never skipped. A missing tool is an error that names the package.

use anyhow::{bail, Result};
use std::path::Path;

use crate::shell::Cmd;
use crate::{cargo, plugins_out_dir};

/// A client suite: where it lives, what it needs installed, how it runs.
struct Suite {
    name: &'static str,
    dir: &'static str,
    /// Programs that must be on `PATH`, with the Debian packages that provide them.
    needs: &'static [(&'static str, &'static str)],
    /// Commands run in `dir`, in order.
    commands: &'static [&'static [&'static str]],
}

const SUITES: &[Suite] = &[
    Suite {
        name: "PHP client and Stud.IP plugin",
        dir: "clients/php",
        needs: &[("php", "php-cli php-curl"), ("phpunit", "phpunit")],
        commands: &[&["phpunit"]],
    },
    Suite {
        name: "browser client and JSUpdater bridge",
        dir: "clients/js",
        needs: &[("node", "nodejs"), ("npm", "npm"), ("chromium", "chromium")],
        // Dev dependencies exactly as the lockfile pins them; the build checks the size
        // budget; the tests drive Debian's Chromium through playwright-core.
        commands: &[&["npm", "ci"], &["npm", "run", "build"], &["npm", "test"]],
    },
];

/// Runs every client suite; fails listing the suites that failed.
pub(crate) fn test(root: &Path) -> Result<()> {
    // The binary the suites start. The same selection and features as `cargo test
    // --workspace` (and the e2e harness, `tests/src/binary.rs`), so after it this is a no-op;
    // `-p stellwerk` alone would unify features differently and rebuild the broker.
    Cmd::new(cargo())
        .args(["build", "--workspace", "--bins", "--tests"])
        .current_dir(root)
        .run()?;
    let broker = root.join("target/debug/stellwerk");
    let mut failed = Vec::new();
    for suite in SUITES {
        if let Err(e) = run(root, suite, &broker) {
            eprintln!("{}: {e:#}", suite.name);
            failed.push(suite.name);
        }
    }
    if !failed.is_empty() {
        bail!("client suites failed: {}", failed.join(", "));
    }
    Ok(())
}

fn run(root: &Path, suite: &Suite, broker: &Path) -> Result<()> {
    for (program, packages) in suite.needs {
        if Cmd::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .probe()
            .is_none()
        {
            bail!(
                "`{program}` is not installed; on Debian: apt-get install {packages} \
                 (.ci/run installs it)"
            );
        }
    }
    for command in suite.commands {
        Cmd::new(command[0])
            .args(&command[1..])
            .env("STELLWERK_BIN", broker)
            .env("STELLWERK_PLUGINS_DIR", plugins_out_dir(root))
            // The e2e tests' cache: each component is compiled once, not per broker start.
            .env(
                "STELLWERK_PLUGINS_COMPILE_CACHE_DIR",
                root.join("target").join("compile-cache"),
            )
            .current_dir(&root.join(suite.dir))
            .run()?;
    }
    Ok(())
}
