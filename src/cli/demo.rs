//! `treaty demo`: a local federation of five agencies of four countries, end to end
//! (`treaty_devkit::demo`).

use std::path::PathBuf;

use clap::Args;
use treaty_devkit::demo::{self, DemoOptions};

use super::{Outcome, this_binary};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Training rounds, 1 to 40: each agency's budget for the job (epsilon 3) also pays for the
    /// evaluation of the model every round (epsilon 0.1 each), which more rounds would spend
    /// alone.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=40))]
    rounds: u32,
    /// Declarations per agency (80 % train, 20 % test).
    #[arg(long, default_value_t = 5000)]
    rows: usize,
    /// Keep the working directory (PKI, data, configurations, logs, databases) here instead of a
    /// temporary directory that is removed at the end.
    #[arg(long)]
    keep: Option<PathBuf>,
}

pub async fn run(args: DemoArgs) -> Outcome {
    demo::run(
        DemoOptions {
            rounds: args.rounds,
            rows: args.rows,
            keep: args.keep,
            exe: this_binary()?,
        },
        crate::signals::terminate(),
    )
    .await?;
    Ok(())
}
