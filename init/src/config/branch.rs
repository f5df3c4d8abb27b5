//! The branch presets (spec §9.2): repository, OS path, tag, Stratum-1 servers and CDN of each
//! CernVM branch, from `branches.table` (compiled in; the image build scripts read the same
//! file). User data selects one with `cvmfs_branch=<name>`; a fully qualified repository name
//! there keeps the original's meaning (the repository only).

/// The table, one line per branch (format: the file's header).
pub const TABLE: &str = include_str!("branches.table");

/// One branch of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    /// The branch name and its aliases (`prod`, `v4prod`).
    pub names: Vec<String>,
    pub repository: String,
    /// `cernvm_path`: the OS tree inside the repository.
    pub path: String,
    pub tag: String,
    /// Stratum-1 host list as shipped (`,`-separated).
    pub servers: String,
    /// CDN host list as shipped, or `NONE`.
    pub cdn: String,
}

/// What `cvmfs_branch=<value>` means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BranchChoice {
    /// A preset of the table.
    Preset(Branch),
    /// A repository name (contains a `.`): the original's meaning.
    Repository(String),
    /// Neither: the boot keeps the repository it had and says why.
    Unknown(UnknownBranch),
}

/// A `cvmfs_branch` value that is neither a preset nor a repository name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "cvmfs_branch={name}: no such branch (known: {known}; or a fully qualified repository \
     name such as cernvm-prod.cern.ch); ignored"
)]
pub struct UnknownBranch {
    pub name: String,
    pub known: String,
}

/// Every branch of the table. Lines that do not have the six fields are skipped (a unit test
/// keeps the table well-formed).
pub fn all() -> Vec<Branch> {
    TABLE
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [names, repository, path, tag, servers, cdn] = f.as_slice() else {
                return None;
            };
            Some(Branch {
                names: names.split(',').map(str::to_string).collect(),
                repository: repository.to_string(),
                path: path.to_string(),
                tag: tag.to_string(),
                servers: servers.to_string(),
                cdn: cdn.to_string(),
            })
        })
        .collect()
}

/// The preset called `name` (or one of its aliases).
pub fn find(name: &str) -> Option<Branch> {
    all()
        .into_iter()
        .find(|b| b.names.iter().any(|n| n == name))
}

/// Every branch name, aliases included, in table order.
pub fn names() -> Vec<String> {
    all().into_iter().flat_map(|b| b.names).collect()
}

/// Every repository of the table, once each, in table order.
pub fn repositories() -> Vec<String> {
    let mut repos: Vec<String> = Vec::new();
    for b in all() {
        if !repos.contains(&b.repository) {
            repos.push(b.repository);
        }
    }
    repos
}

/// Interprets a `cvmfs_branch` value.
pub fn choose(value: &str) -> BranchChoice {
    if let Some(b) = find(value) {
        BranchChoice::Preset(b)
    } else if value.contains('.') {
        BranchChoice::Repository(value.to_string())
    } else {
        BranchChoice::Unknown(UnknownBranch {
            name: value.to_string(),
            known: names().join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_of_the_table_is_a_branch() {
        let lines = TABLE
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim().starts_with('#'))
            .count();
        assert_eq!(all().len(), lines);
        assert_eq!(lines, 10);
    }

    #[test]
    fn names_aliases_and_repository_values() {
        assert_eq!(find("v4prod"), find("prod"));
        assert_eq!(find("testing"), find("v4testing"));
        assert!(
            matches!(choose("sl7"), BranchChoice::Preset(b) if b.repository == "cernvm-sl7.cern.ch")
        );
        assert_eq!(
            choose("my-os.example.org"),
            BranchChoice::Repository("my-os.example.org".into())
        );
        let BranchChoice::Unknown(e) = choose("prdo") else {
            panic!("prdo is not a branch");
        };
        let msg = e.to_string();
        assert!(
            msg.starts_with("cvmfs_branch=prdo: no such branch (known: prod, v4prod, v3prod,"),
            "{msg}"
        );
        assert!(msg.contains("aarch64;"), "{msg}");
        assert_eq!(
            repositories(),
            [
                "cernvm-prod.cern.ch",
                "cernvm-testing.cern.ch",
                "cernvm-devel.cern.ch",
                "cernvm-sl7.cern.ch",
                "cernvm-slc4.cern.ch",
                "cernvm-slc5.cern.ch",
                "cernvm-aarch64.cern.ch"
            ]
        );
    }

    /// The image ships the cern.ch keys for every repository of the table (spec §9.9): the
    /// manifest's key set names each of them.
    #[test]
    fn the_manifest_ships_keys_for_every_branch_repository() {
        let manifest = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../initramfs/ucernvm.manifest"),
        )
        .unwrap();
        let keyset: Vec<&str> = manifest
            .lines()
            .find(|l| l.starts_with("keyset ${manifest_dir}/keys/cern.ch "))
            .expect("a keyset line for the cern.ch keys")
            .split_whitespace()
            .skip(2)
            .collect();
        for repo in repositories() {
            assert!(keyset.contains(&repo.as_str()), "{repo} has no keys");
        }
    }
}
