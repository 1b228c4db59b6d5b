//! The command's error type: a one-line message and whether the input or the run was at
//! fault, which decides the exit code.

use std::fmt;
use std::process::ExitCode;

#[derive(Debug)]
pub enum Failure {
    /// Bad input: config, data file, output folder. Exit code 2.
    Input(String),
    /// The run itself failed: divergence, numerical failure, I/O while writing. Exit code 1.
    Runtime(String),
}

impl Failure {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Input(_) => ExitCode::from(2),
            Failure::Runtime(_) => ExitCode::from(1),
        }
    }

    /// Maps a solver error: rejected inputs are the user's to fix, the rest are failures
    /// of the run.
    pub fn from_solver(source: &str, e: dmft_runtime::DmftError) -> Failure {
        use dmft_runtime::DmftError as E;
        let message = format!("{source}: {e}");
        match e {
            E::Invalid(_) | E::Unsupported(_) => Failure::Input(message),
            E::Diverged { .. } | E::Numerical(_) => Failure::Runtime(message),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (Failure::Input(m) | Failure::Runtime(m)) = self;
        // Library messages are one line by design; this keeps that promise regardless.
        f.write_str(
            &m.split(['\n', '\r'])
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" "),
        )
    }
}
