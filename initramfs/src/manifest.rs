//! The initramfs manifest: which components go into the archive and where they come from.
//!
//! A line-oriented text format (one directive per line, `#` comments, blank lines ignored),
//! grouped into named components so that every build can print a size breakdown:
//!
//! ```text
//! component <name>                       start a component; every line below belongs to it
//! dir      <path> <mode>                 directory
//! file     <source> <path> <mode>        copy of a build-host file
//! exec     <source> <path>               executable (0755) plus, if dynamically linked, the
//!                                        shared libraries and loader it needs (from ldd)
//! symlink  <path> <target>               symbolic link
//! chardev  <path> <major> <minor> <mode> character device node
//! text     <path> <mode> [<content...>]  file holding the rest of the line and a newline
//!                                        (empty file without content)
//! busybox  <source>                      bin/busybox and one link per applet; files added by
//!                                        other lines take precedence over applet links
//! modules  <dir> <name...>               kernel modules of the kernel whose module tree is
//!                                        <dir> (lib/modules/<release>), with dependencies
//! key      <repository> <source>         CernVM-FS public key, etc/cvmfs/keys/<repository>/
//! keys     <dir>                         every <dir>/<repository>/*.pub, as `key`
//! keyset   <dir> <repository...>         every <dir>/*.pub (a domain's keys, e.g. cern.ch), as
//!                                        `key` for each repository
//! ```
//!
//! Paths in the archive are relative (`etc/passwd`); modes are octal. `${name}` is replaced by a
//! variable given to the builder. A directive written with a trailing `?` (`keys? ${cern_keys}`)
//! is optional: it is skipped, with a note, when a variable it uses is not set, its source does
//! not exist, or (for `modules?`) a module is not available in the kernel.

use std::collections::BTreeMap;

/// A syntax error with its 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}:{line}: {message}")]
pub struct ManifestError {
    pub source_name: String,
    pub line: usize,
    pub message: String,
}

/// One directive of the manifest, variables expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Directive {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        source: String,
        path: String,
        mode: u32,
    },
    Exec {
        source: String,
        path: String,
    },
    Symlink {
        path: String,
        target: String,
    },
    CharDevice {
        path: String,
        major: u32,
        minor: u32,
        mode: u32,
    },
    Text {
        path: String,
        mode: u32,
        content: String,
    },
    Busybox {
        source: String,
    },
    Modules {
        dir: String,
        names: Vec<String>,
    },
    Key {
        repository: String,
        source: String,
    },
    Keys {
        dir: String,
    },
    KeySet {
        dir: String,
        repositories: Vec<String>,
    },
}

/// A directive with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub line: usize,
    pub optional: bool,
    /// The directive, or why an optional directive is skipped before it is even looked at.
    pub directive: Result<Directive, String>,
}

/// A named group of items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    pub name: String,
    pub items: Vec<Item>,
}

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Name of the manifest file, for messages.
    pub source_name: String,
    pub components: Vec<Component>,
}

/// Replaces every `${name}` in `text`; `Err` names the first undefined variable.
fn expand(text: &str, vars: &BTreeMap<String, String>) -> Result<String, Expansion> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or(Expansion::Unterminated)?;
        let name = &after[..end];
        match vars.get(name) {
            Some(value) => out.push_str(value),
            None => return Err(Expansion::Undefined(name.to_string())),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

enum Expansion {
    Undefined(String),
    Unterminated,
}

fn parse_mode(text: &str) -> Result<u32, String> {
    match u32::from_str_radix(text, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(format!(
            "{text:?} is not an octal permission mode (0000-7777)"
        )),
    }
}

fn parse_number(text: &str, what: &str) -> Result<u32, String> {
    text.parse()
        .map_err(|_| format!("{what} {text:?} is not a number"))
}

fn expect_args(args: &[String], n: usize, usage: &str) -> Result<(), String> {
    if args.len() == n {
        Ok(())
    } else {
        Err(format!(
            "expected {n} argument(s), got {}; usage: {usage}",
            args.len()
        ))
    }
}

fn parse_directive(keyword: &str, args: Vec<String>, rest: &str) -> Result<Directive, String> {
    let a = |i: usize| args[i].clone();
    Ok(match keyword {
        "dir" => {
            expect_args(&args, 2, "dir <path> <mode>")?;
            Directive::Dir {
                path: a(0),
                mode: parse_mode(&args[1])?,
            }
        }
        "file" => {
            expect_args(&args, 3, "file <source> <path> <mode>")?;
            Directive::File {
                source: a(0),
                path: a(1),
                mode: parse_mode(&args[2])?,
            }
        }
        "exec" => {
            expect_args(&args, 2, "exec <source> <path>")?;
            Directive::Exec {
                source: a(0),
                path: a(1),
            }
        }
        "symlink" => {
            expect_args(&args, 2, "symlink <path> <target>")?;
            Directive::Symlink {
                path: a(0),
                target: a(1),
            }
        }
        "chardev" => {
            expect_args(&args, 4, "chardev <path> <major> <minor> <mode>")?;
            Directive::CharDevice {
                path: a(0),
                major: parse_number(&args[1], "major")?,
                minor: parse_number(&args[2], "minor")?,
                mode: parse_mode(&args[3])?,
            }
        }
        "text" => {
            if args.len() < 2 {
                return Err("usage: text <path> <mode> [<content...>]".into());
            }
            Directive::Text {
                path: a(0),
                mode: parse_mode(&args[1])?,
                content: rest.to_string(),
            }
        }
        "busybox" => {
            expect_args(&args, 1, "busybox <source>")?;
            Directive::Busybox { source: a(0) }
        }
        "modules" => {
            if args.len() < 2 {
                return Err("usage: modules <dir> <name...>".into());
            }
            Directive::Modules {
                dir: a(0),
                names: args[1..].to_vec(),
            }
        }
        "key" => {
            expect_args(&args, 2, "key <repository> <source>")?;
            Directive::Key {
                repository: a(0),
                source: a(1),
            }
        }
        "keys" => {
            expect_args(&args, 1, "keys <dir>")?;
            Directive::Keys { dir: a(0) }
        }
        "keyset" => {
            if args.len() < 2 {
                return Err("usage: keyset <dir> <repository...>".into());
            }
            Directive::KeySet {
                dir: a(0),
                repositories: args[1..].to_vec(),
            }
        }
        other => return Err(format!("unknown directive {other:?}")),
    })
}

const KEYWORDS: &[&str] = &[
    "dir", "file", "exec", "symlink", "chardev", "text", "busybox", "modules", "key", "keys",
    "keyset",
];

/// The text after the first `n` whitespace-separated words of `line`.
fn after_words(line: &str, n: usize) -> &str {
    let mut rest = line.trim_start();
    for _ in 0..n {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        rest = rest[end..].trim_start();
    }
    rest
}

impl Manifest {
    /// Parses `text`, replacing `${name}` with `vars[name]`.
    pub fn parse(
        source_name: &str,
        text: &str,
        vars: &BTreeMap<String, String>,
    ) -> Result<Manifest, ManifestError> {
        let mut components: Vec<Component> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let err = |message: String| ManifestError {
                source_name: source_name.to_string(),
                line: line_no,
                message,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let word = words.next().unwrap_or_default();
            let (keyword, optional) = match word.strip_suffix('?') {
                Some(k) => (k, true),
                None => (word, false),
            };
            if keyword == "component" {
                let name: Vec<&str> = words.collect();
                if name.len() != 1 || optional {
                    return Err(err("usage: component <name>".into()));
                }
                if components.iter().any(|c| c.name == name[0]) {
                    return Err(err(format!("component {:?} is defined twice", name[0])));
                }
                components.push(Component {
                    name: name[0].to_string(),
                    items: Vec::new(),
                });
                continue;
            }
            if !KEYWORDS.contains(&keyword) {
                return Err(err(format!("unknown directive {keyword:?}")));
            }
            let Some(component) = components.last_mut() else {
                return Err(err(format!(
                    "{keyword:?} before the first 'component' line"
                )));
            };
            let expanded: Result<Vec<String>, Expansion> = words.map(|w| expand(w, vars)).collect();
            let directive = match expanded {
                Ok(args) => {
                    let rest = expand(after_words(line, 3), vars).unwrap_or_default();
                    Ok(parse_directive(keyword, args, &rest).map_err(err)?)
                }
                Err(Expansion::Unterminated) => return Err(err("unterminated '${'".into())),
                Err(Expansion::Undefined(name)) if optional => {
                    Err(format!("variable {name} is not set"))
                }
                Err(Expansion::Undefined(name)) => {
                    return Err(err(format!(
                        "variable ${{{name}}} is not set (give it to the builder: --set {name}=<value>)"
                    )))
                }
            };
            component.items.push(Item {
                line: line_no,
                optional,
                directive,
            });
        }
        Ok(Manifest {
            source_name: source_name.to_string(),
            components,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_components_directives_and_variables() {
        let text = "# comment\n\
            component base\n\
            dir tmp 1777\n\
            chardev dev/console 5 1 600\n\
            text version 0644 ${version} (test)\n\
            \n\
            component tools\n\
            exec ${static}/init init\n\
            modules ${kmods} virtio_blk sr_mod\n\
            keys? ${cern_keys}\n";
        let m = Manifest::parse(
            "test.manifest",
            text,
            &vars(&[
                ("version", "2026.11-1.cernvm.x86_64"),
                ("static", "/s"),
                ("kmods", "/k/6.1"),
            ]),
        )
        .unwrap();
        assert_eq!(m.components.len(), 2);
        assert_eq!(m.components[0].name, "base");
        let base: Vec<_> = m.components[0]
            .items
            .iter()
            .map(|i| i.directive.clone().unwrap())
            .collect();
        assert_eq!(
            base,
            [
                Directive::Dir {
                    path: "tmp".into(),
                    mode: 0o1777
                },
                Directive::CharDevice {
                    path: "dev/console".into(),
                    major: 5,
                    minor: 1,
                    mode: 0o600
                },
                Directive::Text {
                    path: "version".into(),
                    mode: 0o644,
                    content: "2026.11-1.cernvm.x86_64 (test)".into()
                },
            ]
        );
        let tools = &m.components[1].items;
        assert_eq!(
            tools[0].directive,
            Ok(Directive::Exec {
                source: "/s/init".into(),
                path: "init".into()
            })
        );
        assert_eq!(tools[0].line, 8);
        assert_eq!(
            tools[1].directive,
            Ok(Directive::Modules {
                dir: "/k/6.1".into(),
                names: vec!["virtio_blk".into(), "sr_mod".into()]
            })
        );
        assert!(tools[2].optional);
        assert_eq!(
            tools[2].directive,
            Err("variable cern_keys is not set".to_string())
        );
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let check = |text: &str, expected: &str| {
            let err = Manifest::parse("m", text, &vars(&[])).unwrap_err();
            assert_eq!(err.to_string(), expected);
        };
        check(
            "dir tmp 1777\n",
            "m:1: \"dir\" before the first 'component' line",
        );
        check(
            "component a\ndir tmp 1778\n",
            "m:2: \"1778\" is not an octal permission mode (0000-7777)",
        );
        check(
            "component a\nfile x y\n",
            "m:2: expected 3 argument(s), got 2; usage: file <source> <path> <mode>",
        );
        check(
            "component a\nexec ${static}/init init\n",
            "m:2: variable ${static} is not set (give it to the builder: --set static=<value>)",
        );
        check("component a\ncopy x y\n", "m:2: unknown directive \"copy\"");
        check(
            "component a\ncopy? ${x} y\n",
            "m:2: unknown directive \"copy\"",
        );
        check(
            "component a\ncomponent a\n",
            "m:2: component \"a\" is defined twice",
        );
        check("component a\nkey r ${x\n", "m:2: unterminated '${'");
    }
}
