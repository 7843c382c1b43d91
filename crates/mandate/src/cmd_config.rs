//! `mandate config reference`: the configuration reference, generated from the declarations it
//! describes (`config::REFERENCE`, `config::OTHER_ENV`, the gateway's and broker's clap flags).
//! docs/configuration.md holds a copy between markers; a test fails when that copy is stale.

use std::fmt::Write as _;

use clap::{Args, Subcommand, ValueEnum};

use crate::config::{OTHER_ENV, REFERENCE, SettingDoc, ValueKind};

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Print the configuration reference: every setting with its environment variable, flag,
    /// default and accepted values, then the gateway's and the broker's flags.
    Reference(ReferenceArgs),
}

#[derive(Debug, Args)]
pub struct ReferenceArgs {
    #[arg(long, value_enum, default_value_t = Format::Markdown)]
    format: Format,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// The block kept in docs/configuration.md.
    Markdown,
}

pub fn config(command: ConfigCmd) -> anyhow::Result<()> {
    match command {
        ConfigCmd::Reference(args) => match args.format {
            Format::Markdown => print!("{}", reference_markdown()),
        },
    }
    Ok(())
}

/// The reference as markdown, links relative to `docs/`.
pub fn reference_markdown() -> String {
    let mut out = String::new();
    out.push_str("### Settings\n\n");
    out.push_str("| key | environment | flag | default | values | meaning |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    for setting in REFERENCE {
        let flag = setting.flag.map(|flag| format!("`{flag}`")).unwrap_or_default();
        let _ = writeln!(
            out,
            "| `{}` | `{}` | {} | {} | {} | {} |",
            setting.key,
            setting.env_var(),
            flag,
            cell(setting.default),
            cell(&values(setting)),
            cell(&setting.meaning()),
        );
    }
    out.push_str("\n### Other environment variables\n\n");
    for variable in OTHER_ENV {
        let _ = writeln!(out, "- `{}`: {}", variable.name, variable.meaning);
    }
    flag_table(
        &mut out,
        "`mandate gateway` flags ([gateway.md](gateway.md), [governance.md](governance.md))",
        <crate::cmd_gateway::GatewayArgs as Args>::augment_args(clap::Command::new("gateway")),
    );
    flag_table(
        &mut out,
        "`mandate broker run` flags ([broker.md](broker.md))",
        <crate::cmd_broker::RunArgs as Args>::augment_args(clap::Command::new("run")),
    );
    out
}

fn values(setting: &SettingDoc) -> String {
    match (setting.values, setting.kind) {
        (Some(values), _) => values.to_owned(),
        (None, ValueKind::Boolean) => "`true`, `false`".to_owned(),
        (None, ValueKind::Integer) => "integer".to_owned(),
        (None, ValueKind::Text) => String::new(),
    }
}

/// The gateway and the broker take flags, not settings: their table comes from the clap
/// definitions the binary parses.
fn flag_table(out: &mut String, title: &str, mut command: clap::Command) {
    command.build();
    let _ = write!(out, "\n### {title}\n\n| flag | default | meaning |\n|---|---|---|\n");
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
        let flag = match arg.get_value_names() {
            Some([name, ..]) if takes_value => format!("`--{long} <{name}>`"),
            _ => format!("`--{long}`"),
        };
        let defaults: Vec<String> = arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
        let default = if arg.is_required_set() {
            "required".to_owned()
        } else if !takes_value {
            "off".to_owned()
        } else if defaults.iter().all(String::is_empty) {
            "unset".to_owned()
        } else {
            format!("`{}`", defaults.join(" "))
        };
        let help = arg.get_long_help().or(arg.get_help()).map(ToString::to_string).unwrap_or_default();
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        let _ = writeln!(out, "| {flag} | {default} | {} |", cell(&escape_angle_brackets(&help)));
    }
}

/// Help texts say `<data dir>` in plain text, which markdown would take for an HTML tag; inside
/// backticks it is already literal.
fn escape_angle_brackets(text: &str) -> String {
    let mut in_code = false;
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '`' => in_code = !in_code,
            '<' if !in_code => escaped.push('\\'),
            _ => {}
        }
        escaped.push(c);
    }
    escaped
}

/// A markdown table cell: one line, no bare column separator.
fn cell(text: &str) -> String {
    text.replace('\n', " ").replace('|', "\\|")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
    /// Where the generated block starts and ends in docs/configuration.md.
    const BEGIN_MARKER: &str = "<!-- BEGIN GENERATED: mandate config reference -->";
    const END_MARKER: &str = "<!-- END GENERATED -->";
    const UPDATE_VAR: &str = "UPDATE_GENERATED_DOCS";

    /// Fails when docs/configuration.md's generated block differs from the code; with
    /// UPDATE_GENERATED_DOCS=1 it rewrites the block instead.
    #[test]
    fn configuration_doc_is_generated_from_the_code() {
        let text = std::fs::read_to_string(DOC).expect("docs/configuration.md is readable");
        let begin = text.find(BEGIN_MARKER).expect("docs/configuration.md has the BEGIN GENERATED marker");
        let end = text.find(END_MARKER).expect("docs/configuration.md has the END GENERATED marker");
        assert!(begin < end, "the BEGIN GENERATED marker comes before END GENERATED");
        let current = &text[begin + BEGIN_MARKER.len()..end];
        let expected = format!("\n{}", reference_markdown());
        if current == expected {
            return;
        }
        if std::env::var_os(UPDATE_VAR).is_some() {
            let updated = format!("{}{expected}{}", &text[..begin + BEGIN_MARKER.len()], &text[end..]);
            std::fs::write(DOC, updated).unwrap();
            return;
        }
        panic!(
            "docs/configuration.md is out of date with crates/mandate/src/config.rs (or the gateway/broker \
             flags). Regenerate it with:\n    {UPDATE_VAR}=1 cargo test -p mandate configuration_doc\n\
             (the block is `mandate config reference` between the markers)"
        );
    }

    #[test]
    fn the_documented_example_file_is_valid() {
        let text = std::fs::read_to_string(DOC).expect("docs/configuration.md is readable");
        let example = text.split("```toml\n").nth(1).and_then(|rest| rest.split("```").next()).expect("a toml example");
        let settings = crate::config::Settings::from_toml(example).unwrap();
        assert_eq!(settings.access_token_ttl_secs().unwrap(), 600);
        assert_eq!(settings.log_format, Some(crate::config::LogFormat::Json));
    }

    #[test]
    fn every_setting_and_flag_is_documented() {
        let markdown = reference_markdown();
        for setting in REFERENCE {
            assert!(!setting.meaning().is_empty(), "{} has a doc comment", setting.key);
            assert!(markdown.contains(&format!("| `{}` |", setting.key)));
        }
        for flag in ["`--upstream <UPSTREAM>`", "`--tts-url <TTS_URL>`", "`--rules <RULES>`", "`--no-system-roots`"] {
            assert!(markdown.contains(flag), "{flag} is in the reference");
        }
        assert!(markdown.contains("| `--max-connections <MAX_CONNECTIONS>` | `1024` |"));
        assert!(markdown.contains("| `--listen <LISTEN>` | required |"));
    }

    #[test]
    fn table_cells_stay_on_one_line() {
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }

    #[test]
    fn angle_brackets_are_escaped_outside_code_only() {
        assert_eq!(escape_angle_brackets("<data dir>/x and `<kept>`"), "\\<data dir>/x and `<kept>`");
    }
}
