//! weft-cni: invoked by the container runtime once per CNI verb. The result
//! or error goes to stdout, logs to stderr (WEFT_CNI_LOG sets the filter).

use std::io::Write;

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_CNI_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let outcome = weft_cni::run(|name| std::env::var(name).ok(), std::io::stdin().lock());
    if let Some(json) = &outcome.stdout {
        let mut stdout = std::io::stdout().lock();
        // Nothing sensible is left to do if stdout is gone.
        let _ = writeln!(stdout, "{json}");
    }
    std::process::exit(outcome.exit_code);
}
