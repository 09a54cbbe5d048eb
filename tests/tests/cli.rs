//! Bad input: each gets one clear line on stderr and its exit code
//! (2: flags or configuration; 1: the system refuses).

use flowagent_tests::agent::{TempDir, bin, run_expecting_failure};

fn expect(prefix: &[&str], args: &[&str], code: i32, needle: &str) {
    let (got, stderr) = run_expecting_failure(prefix, args);
    assert_eq!(got, code, "{args:?}: exit code; stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: want one line, got:\n{stderr}");
    assert!(lines[0].starts_with("flowagent: "), "{args:?}: {stderr}");
    assert!(
        lines[0].contains(needle),
        "{args:?}: {needle:?} not in {stderr}"
    );
}

#[test]
fn bad_flags_are_one_line_errors() {
    expect(
        &[],
        &["--iface", "nosuch0"],
        1,
        "unknown interface \"nosuch0\"",
    );
    expect(
        &[],
        &["--iface", "eth["],
        2,
        "invalid --iface \"eth[\": bad glob",
    );
    expect(
        &[],
        &["--sampling", "abc"],
        2,
        "invalid value 'abc' for '--sampling <N>'",
    );
    expect(&[], &["--sampling", "0"], 2, "invalid --sampling \"0\"");
    expect(
        &[],
        &["--interval", "1.5"],
        2,
        "invalid value '1.5' for '--interval <SECONDS>'",
    );
    expect(&[], &["--max-flows", "100000000"], 2, "map size too large");
    expect(&[], &["--mode", "turbo"], 2, "invalid --mode \"turbo\"");
    expect(&[], &["--direction", "egress"], 2, "XDP sees ingress only");
    expect(
        &[],
        &["--frobnicate"],
        2,
        "unexpected argument '--frobnicate'",
    );
}

#[test]
fn bad_config_files_are_one_line_errors() {
    let dir = TempDir::new("cli");
    let unknown = dir.0.join("unknown.toml");
    std::fs::write(&unknown, "sampling = 10\nsamplign = 3\n").unwrap();
    expect(
        &[],
        &["--config", unknown.to_str().unwrap()],
        2,
        "unknown field `samplign`",
    );
    let bad_value = dir.0.join("bad.toml");
    std::fs::write(&bad_value, "max_flows = 0\n").unwrap();
    expect(
        &[],
        &["--config", bad_value.to_str().unwrap()],
        2,
        "invalid --max-flows \"0\"",
    );
    expect(
        &[],
        &["--config", "/nonexistent/flowagent.toml"],
        2,
        "cannot read config file",
    );
    // A flag overrides the file's bad value.
    let (code, stderr) = run_expecting_failure(
        &[],
        &[
            "--config",
            bad_value.to_str().unwrap(),
            "--max-flows",
            "10",
            "--iface",
            "nosuch0",
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("unknown interface"), "{stderr}");
}

#[test]
fn missing_privileges_name_the_capabilities() {
    expect(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ],
        &["--iface", "lo"],
        1,
        "missing privileges (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON)",
    );
}

#[test]
fn kernel_without_btf_is_reported() {
    // A private mount namespace where /sys/kernel/btf is an empty tmpfs: to
    // the agent, a kernel built without BTF.
    let script = "mount -t tmpfs none /sys/kernel/btf && exec \"$0\" \"$@\"";
    let bin = bin();
    let (code, stderr) = run_expecting_failure(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
        ],
        &["--iface", "lo"],
    );
    let _ = bin;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("kernel without BTF"), "{stderr}");
}
