//! Runs commands, printing each one (with the environment it sets) before it starts, so a
//! reader can repeat any step by hand.

use anyhow::{Context, Result};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A command that exited unsuccessfully; `main` turns its code into xtask's exit code.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) command: String,
    pub(crate) code: Option<i32>,
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "`{}` failed with exit code {code}", self.command),
            None => write!(f, "`{}` was killed by a signal", self.command),
        }
    }
}

impl std::error::Error for Failed {}

pub(crate) struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    /// Name, value, and how to print it.
    envs: Vec<(String, OsString, String)>,
    dir: Option<PathBuf>,
}

impl Cmd {
    pub(crate) fn new(program: impl Into<OsString>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            dir: None,
        }
    }

    pub(crate) fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub(crate) fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub(crate) fn env(self, key: &str, value: impl AsRef<OsStr>) -> Self {
        let shown = quote(value.as_ref());
        self.env_shown(key, value, shown)
    }

    /// Like [`env`](Self::env), printed as `shown` (`PATH=/x:$PATH`, not the whole PATH).
    pub(crate) fn env_shown(mut self, key: &str, value: impl AsRef<OsStr>, shown: String) -> Self {
        self.envs
            .push((key.to_owned(), value.as_ref().to_owned(), shown));
        self
    }

    pub(crate) fn current_dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_owned());
        self
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v, _)| (k, v)));
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        command
    }

    fn announce(&self) {
        match &self.dir {
            Some(dir) => eprintln!("$ (cd {} && {self})", dir.display()),
            None => eprintln!("$ {self}"),
        }
    }

    /// Runs with inherited stdio; an unsuccessful exit is a [`Failed`] error.
    pub(crate) fn run(&self) -> Result<()> {
        self.announce();
        let status = self
            .command()
            .status()
            .with_context(|| format!("could not start `{self}`"))?;
        if status.success() {
            Ok(())
        } else {
            Err(Failed {
                command: self.to_string(),
                code: status.code(),
            }
            .into())
        }
    }

    /// Runs like [`Cmd::run`] but captures stdout (stderr still reaches the terminal) and
    /// returns it.
    pub(crate) fn output(&self) -> Result<String> {
        self.announce();
        let output = self
            .command()
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("could not start `{self}`"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(Failed {
                command: self.to_string(),
                code: output.status.code(),
            }
            .into())
        }
    }

    /// Runs silently and returns stdout; `None` if it cannot start or fails (used to probe
    /// what is installed, so it is not announced).
    pub(crate) fn probe(&self) -> Option<String> {
        let output = self
            .command()
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Replaces this process with the command where the OS allows, else runs it.
    pub(crate) fn exec(self) -> Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            self.announce();
            let err = self.command().exec();
            Err(err).with_context(|| format!("could not start `{self}`"))
        }
        #[cfg(not(unix))]
        self.run()
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, _, shown) in &self.envs {
            write!(f, "{key}={shown} ")?;
        }
        write!(f, "{}", quote(&self.program))?;
        for arg in &self.args {
            write!(f, " {}", quote(arg))?;
        }
        Ok(())
    }
}

/// Shell-quotes only what needs it, so printed commands stay readable and copy-pastable.
pub(crate) fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
