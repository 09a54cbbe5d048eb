//! The benchmark runner behind `cargo xtask bench` (needs root).
//!
//! Usage: flowagent-bench [--quick] [--out DIR] [--only SECTION]
//! (`--only lpm`: only the longest-prefix figures of the rib section)

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let mut quick = false;
    let mut only = None;
    let mut out = std::path::PathBuf::from(".");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--out" => out = args.next().expect("--out DIR").into(),
            "--only" => only = Some(args.next().expect("--only SECTION")),
            other => {
                eprintln!(
                    "flowagent-bench: unknown argument {other:?}; usage: flowagent-bench [--quick] [--out DIR] [--only SECTION]"
                );
                std::process::exit(2);
            }
        }
    }
    let sections = flowagent_tests::bench::SECTIONS;
    let known = |s: &&str| sections.contains(s) || *s == flowagent_tests::bench::LPM_ONLY;
    if let Some(s) = only.as_deref().filter(|s| !known(s)) {
        eprintln!(
            "flowagent-bench: unknown section {s:?}; sections: {}",
            sections.join(", ")
        );
        std::process::exit(2);
    }
    flowagent_tests::bench::run(&out, quick, only.as_deref());
}
