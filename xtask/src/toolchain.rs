//! Reading the pinned eBPF toolchain out of `flowagent-ebpf/rust-toolchain.toml`.
//!
//! No dependencies and no `crate::` paths: flowagent's build script includes
//! this file too (`#[path]`), so that the toolchain aya-build runs and the one
//! `cargo xtask setup` installs are read by one piece of code.

/// The channel of the rust-toolchain.toml at `path`, or what is wrong with
/// it (a plain message: this file has no error crate to use).
pub fn read_channel(path: &std::path::Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    channel(&text)
        .map(str::to_owned)
        .ok_or_else(|| format!("{} has no `channel = \"...\"` line", path.display()))
}

/// The value of the `channel = "..."` line of a rust-toolchain.toml; None
/// when there is no such line (a comment or another key does not count).
pub fn channel(text: &str) -> Option<&str> {
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix("channel")?.trim_start();
        value
            .strip_prefix('=')?
            .trim()
            .strip_prefix('"')?
            .strip_suffix('"')
    })
}

#[cfg(test)]
mod tests {
    use super::channel;

    #[test]
    fn channel_lines_parse_and_others_do_not() {
        assert_eq!(
            channel("[toolchain]\nchannel = \"nightly-1\"\n"),
            Some("nightly-1")
        );
        assert_eq!(channel("  channel=\"x\""), Some("x"));
        assert_eq!(channel("# channel = \"x\""), None);
        assert_eq!(channel("channels = \"x\""), None);
        assert_eq!(channel("channel = x"), None);
    }
}
