//! Checks a Linux kernel `.config` against the options µCernVM needs.
//!
//! Two inputs:
//! * a kernel `.config` as written by Kconfig: `CONFIG_X=y`, `CONFIG_X=m`, `CONFIG_X="string"`,
//!   `CONFIG_X=123` / `CONFIG_X=0x1f`, `# CONFIG_X is not set`, other `#` lines are comments;
//! * a requirement fragment of our own format: `CONFIG_X=y` (must be built in), `CONFIG_X=m`
//!   (built in or a module), blank lines and `#` comments.
//!
//! [`check`] lists every requirement that the configuration does not meet.

use std::collections::BTreeMap;
use std::fmt;

/// A syntax error in a `.config` or fragment, with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}:{line}: {message}")]
pub struct ParseError {
    pub source_name: String,
    pub line: usize,
    pub message: String,
}

/// The value of one option in a kernel configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `=y`
    BuiltIn,
    /// `=m`
    Module,
    /// `# CONFIG_X is not set` (or `=n`)
    NotSet,
    /// `="..."`, unescaped
    Str(String),
    /// A decimal or hexadecimal number, as written.
    Number(String),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::BuiltIn => f.write_str("built in (=y)"),
            Value::Module => f.write_str("a module (=m)"),
            Value::NotSet => f.write_str("not set"),
            Value::Str(s) => write!(f, "the string {s:?}"),
            Value::Number(n) => write!(f, "the number {n}"),
        }
    }
}

/// A parsed kernel configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelConfig {
    options: BTreeMap<String, Value>,
}

fn is_symbol(name: &str) -> bool {
    name.strip_prefix("CONFIG_").is_some_and(|rest| {
        !rest.is_empty()
            && rest.bytes().all(|b| {
                b.is_ascii_uppercase() || b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'
            })
    })
}

fn is_number(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit())
    } else {
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    }
}

/// Unescapes a Kconfig string value (`"..."` with `\"` and `\\`).
fn parse_string(text: &str) -> Option<String> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

impl KernelConfig {
    /// Parses the text of a `.config`; `source_name` is used in error messages.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, ParseError> {
        let mut options = BTreeMap::new();
        for (index, raw) in text.lines().enumerate() {
            let err = |message: String| ParseError {
                source_name: source_name.to_string(),
                line: index + 1,
                message,
            };
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                if let Some(name) = comment
                    .trim()
                    .strip_suffix(" is not set")
                    .filter(|n| is_symbol(n))
                {
                    options.insert(name.to_string(), Value::NotSet);
                }
                continue;
            }
            let (name, value) = line
                .split_once('=')
                .ok_or_else(|| err(format!("expected CONFIG_X=value, found {line:?}")))?;
            if !is_symbol(name) {
                return Err(err(format!("{name:?} is not a CONFIG_ symbol")));
            }
            let value = match value {
                "y" => Value::BuiltIn,
                "m" => Value::Module,
                "n" => Value::NotSet,
                v if v.starts_with('"') => Value::Str(
                    parse_string(v).ok_or_else(|| err(format!("malformed string value {v}")))?,
                ),
                v if is_number(v) => Value::Number(v.to_string()),
                v => return Err(err(format!("{name}: unrecognised value {v:?}"))),
            };
            options.insert(name.to_string(), value);
        }
        Ok(KernelConfig { options })
    }

    /// The value of `symbol` (with its `CONFIG_` prefix), `None` when it does not appear at all.
    pub fn get(&self, symbol: &str) -> Option<&Value> {
        self.options.get(symbol)
    }

    pub fn len(&self) -> usize {
        self.options.len()
    }

    pub fn is_empty(&self) -> bool {
        self.options.is_empty()
    }
}

/// How an option must be provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `=y`: compiled into the kernel image.
    BuiltIn,
    /// `=m`: built in or as a loadable module.
    BuiltInOrModule,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Level::BuiltIn => f.write_str("built in (=y)"),
            Level::BuiltInOrModule => f.write_str("built in or as a module (=y or =m)"),
        }
    }
}

/// One line of a requirement fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub symbol: String,
    pub level: Level,
    /// Line in the fragment, for messages.
    pub line: usize,
}

/// A parsed requirement fragment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fragment {
    pub requirements: Vec<Requirement>,
}

impl Fragment {
    /// Parses a fragment; each symbol may appear once.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, ParseError> {
        let mut requirements: Vec<Requirement> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let err = |message: String| ParseError {
                source_name: source_name.to_string(),
                line: index + 1,
                message,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (symbol, value) = line
                .split_once('=')
                .ok_or_else(|| err(format!("expected CONFIG_X=y or CONFIG_X=m, found {line:?}")))?;
            if !is_symbol(symbol) {
                return Err(err(format!("{symbol:?} is not a CONFIG_ symbol")));
            }
            let level = match value {
                "y" => Level::BuiltIn,
                "m" => Level::BuiltInOrModule,
                other => {
                    return Err(err(format!(
                        "{symbol}: requirement must be =y (built in) or =m (built in or module), found ={other}"
                    )))
                }
            };
            if let Some(previous) = requirements.iter().find(|r| r.symbol == symbol) {
                return Err(err(format!(
                    "{symbol} is already required on line {}",
                    previous.line
                )));
            }
            requirements.push(Requirement {
                symbol: symbol.to_string(),
                level,
                line: index + 1,
            });
        }
        Ok(Fragment { requirements })
    }
}

/// A requirement the configuration does not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet {
    pub requirement: Requirement,
    /// What the configuration has; `None` when the symbol does not appear in it at all.
    pub found: Option<Value>,
}

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} must be {} (fragment line {}), but ",
            self.requirement.symbol, self.requirement.level, self.requirement.line
        )?;
        match &self.found {
            None => f.write_str("it does not appear in the kernel configuration"),
            Some(value) => write!(f, "it is {value}"),
        }
    }
}

/// Every requirement of `fragment` that `config` does not meet, in fragment order.
pub fn check(config: &KernelConfig, fragment: &Fragment) -> Vec<Unmet> {
    fragment
        .requirements
        .iter()
        .filter_map(|req| {
            let found = config.get(&req.symbol);
            let met = matches!(
                (req.level, found),
                (_, Some(Value::BuiltIn)) | (Level::BuiltInOrModule, Some(Value::Module))
            );
            (!met).then(|| Unmet {
                requirement: req.clone(),
                found: found.cloned(),
            })
        })
        .collect()
}

/// The fragment shipped with this crate (`ucernvm.fragment`).
pub const UCERNVM_FRAGMENT: &str = include_str!("../ucernvm.fragment");

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"#
# Automatically generated file; DO NOT EDIT.
# Linux/x86 6.1.0 Kernel Configuration
#
CONFIG_CC_VERSION_TEXT="gcc-12 (Debian 12.2.0-14) 12.2.0"
CONFIG_DEVTMPFS=y
# CONFIG_DEVTMPFS_MOUNT is not set
CONFIG_EXT4_FS=y
CONFIG_FUSE_FS=m
CONFIG_OVERLAY_FS=m
# CONFIG_SATA_AHCI is not set
CONFIG_LOG_BUF_SHIFT=17
CONFIG_PHYSICAL_START=0x1000000
CONFIG_PANIC_TIMEOUT=-1
CONFIG_DEFAULT_HOSTNAME="(none) \"quoted\" \\"
CONFIG_RD_ZSTD=y
"#;

    fn config() -> KernelConfig {
        KernelConfig::parse(CONFIG, "test.config").unwrap()
    }

    #[test]
    fn parses_all_value_forms() {
        let c = config();
        assert_eq!(c.get("CONFIG_DEVTMPFS"), Some(&Value::BuiltIn));
        assert_eq!(c.get("CONFIG_FUSE_FS"), Some(&Value::Module));
        assert_eq!(c.get("CONFIG_SATA_AHCI"), Some(&Value::NotSet));
        assert_eq!(
            c.get("CONFIG_LOG_BUF_SHIFT"),
            Some(&Value::Number("17".into()))
        );
        assert_eq!(
            c.get("CONFIG_PHYSICAL_START"),
            Some(&Value::Number("0x1000000".into()))
        );
        assert_eq!(
            c.get("CONFIG_PANIC_TIMEOUT"),
            Some(&Value::Number("-1".into()))
        );
        assert_eq!(
            c.get("CONFIG_DEFAULT_HOSTNAME"),
            Some(&Value::Str(r#"(none) "quoted" \"#.into()))
        );
        assert_eq!(c.get("CONFIG_E1000"), None);
        assert_eq!(c.len(), 12);
    }

    #[test]
    fn config_syntax_errors_carry_line_numbers() {
        let err = KernelConfig::parse("CONFIG_A=y\nGARBAGE\n", "x").unwrap_err();
        assert_eq!(err.line, 2);
        assert_eq!(
            err.to_string(),
            "x:2: expected CONFIG_X=value, found \"GARBAGE\""
        );
        let err = KernelConfig::parse("CONFIG_A=maybe\n", "x").unwrap_err();
        assert!(err.message.contains("unrecognised value"), "{err}");
        let err = KernelConfig::parse("CONFIG_A=\"open\n", "x").unwrap_err();
        assert!(err.message.contains("malformed string"), "{err}");
        let err = KernelConfig::parse("FOO=y\n", "x").unwrap_err();
        assert!(err.message.contains("not a CONFIG_ symbol"), "{err}");
    }

    #[test]
    fn fragment_parsing() {
        let f = Fragment::parse(
            "# needed\nCONFIG_DEVTMPFS=y\n\n  CONFIG_FUSE_FS=m  \n",
            "frag",
        )
        .unwrap();
        assert_eq!(
            f.requirements,
            vec![
                Requirement {
                    symbol: "CONFIG_DEVTMPFS".into(),
                    level: Level::BuiltIn,
                    line: 2
                },
                Requirement {
                    symbol: "CONFIG_FUSE_FS".into(),
                    level: Level::BuiltInOrModule,
                    line: 4
                },
            ]
        );
        let err = Fragment::parse("CONFIG_A=n\n", "frag").unwrap_err();
        assert!(err.message.contains("must be =y"), "{err}");
        let err = Fragment::parse("CONFIG_A=y\nCONFIG_A=m\n", "frag").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("already required on line 1"), "{err}");
        assert!(Fragment::parse("CONFIG_A\n", "frag").is_err());
    }

    #[test]
    fn check_reports_every_unmet_requirement() {
        let fragment = Fragment::parse(
            "CONFIG_DEVTMPFS=y\n\
             CONFIG_EXT4_FS=m\n\
             CONFIG_FUSE_FS=m\n\
             CONFIG_OVERLAY_FS=y\n\
             CONFIG_SATA_AHCI=m\n\
             CONFIG_E1000=m\n\
             CONFIG_LOG_BUF_SHIFT=y\n\
             CONFIG_RD_ZSTD=y\n",
            "frag",
        )
        .unwrap();
        let unmet = check(&config(), &fragment);
        let symbols: Vec<&str> = unmet
            .iter()
            .map(|u| u.requirement.symbol.as_str())
            .collect();
        assert_eq!(
            symbols,
            [
                "CONFIG_OVERLAY_FS",
                "CONFIG_SATA_AHCI",
                "CONFIG_E1000",
                "CONFIG_LOG_BUF_SHIFT"
            ]
        );
        let messages: Vec<String> = unmet.iter().map(|u| u.to_string()).collect();
        assert_eq!(
            messages[0],
            "CONFIG_OVERLAY_FS must be built in (=y) (fragment line 4), but it is a module (=m)"
        );
        assert_eq!(
            messages[1],
            "CONFIG_SATA_AHCI must be built in or as a module (=y or =m) (fragment line 5), but it is not set"
        );
        assert!(messages[2].ends_with("it does not appear in the kernel configuration"));
        assert!(messages[3].ends_with("it is the number 17"));
    }

    #[test]
    fn a_config_meeting_everything_has_no_unmet() {
        let fragment = Fragment::parse("CONFIG_DEVTMPFS=y\nCONFIG_FUSE_FS=m\n", "f").unwrap();
        assert!(check(&config(), &fragment).is_empty());
    }

    #[test]
    fn shipped_fragment_parses() {
        let f = Fragment::parse(UCERNVM_FRAGMENT, "ucernvm.fragment").unwrap();
        assert!(f.requirements.len() > 20);
        for must in [
            "CONFIG_DEVTMPFS",
            "CONFIG_RD_XZ",
            "CONFIG_BLK_DEV_INITRD",
            "CONFIG_KEXEC",
            "CONFIG_KEXEC_FILE",
            "CONFIG_RD_ZSTD",
        ] {
            let req = f.requirements.iter().find(|r| r.symbol == must).unwrap();
            assert_eq!(req.level, Level::BuiltIn, "{must}");
        }
    }
}
