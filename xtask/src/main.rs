//! Developer tasks for flowagent: `cargo xtask setup|build|run|test|bench`.
//!
//! Each subcommand is a module; `build`, `run` and `test` call `setup`'s
//! check first and install only what is missing.

mod bench;
mod build;
mod run;
mod setup;
mod test;
mod toolchain;
mod util;

use clap::{Parser, Subcommand};

/// flowagent developer tasks.
#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install the eBPF toolchain (nightly, rust-src, bpf-linker) and the
    /// Debian packages the tests use. Idempotent.
    Setup,
    /// Build the agent (and, through its build script, the eBPF programs).
    Build(build::Options),
    /// Build, then run the agent as root with the given arguments.
    Run(run::Options),
    /// Formatting and lint checks, unit tests, then the privileged
    /// end-to-end tests in network namespaces.
    Test(test::Options),
    /// Measure cost, scale and accuracy against baselines and pmacctd;
    /// writes BENCHMARKS.md and bench-results.json.
    Bench(bench::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Build(opts) => build::run(&opts).map(drop),
        Command::Run(opts) => run::run(&opts),
        Command::Test(opts) => test::run(&opts),
        Command::Bench(opts) => bench::run(&opts),
    }
}
