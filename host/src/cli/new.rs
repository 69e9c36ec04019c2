//! `plugin new NAME`: writes a plugin crate that builds for `wasm32-wasip2`, with a passing
//! native test and a fixture file, from the template compiled into this binary (so the host
//! and its template never disagree about the SDK or the fixture format).
//!
//! The SDK is not published: the crate depends on it by path. `--sdk-path` names it; without
//! it, the SDK of the repository the command runs in (or that this binary was built from) is
//! used. The new crate is its own workspace, so it does not join one it is created inside.

use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

const CARGO_TOML: &str = include_str!("../../templates/plugin/Cargo.toml.template");
const LIB_RS: &str = include_str!("../../templates/plugin/src/lib.rs");
const FIXTURE: &str = include_str!("../../templates/plugin/fixtures/basic.ndjson");
const GITIGNORE: &str = include_str!("../../templates/plugin/gitignore.template");

#[derive(clap::Args)]
pub struct Args {
    /// The crate's name: lowercase letters, digits, `-` and `_`, starting with a letter.
    name: String,
    /// Where to create the crate's directory.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// The `plugin-sdk` directory of a commission-host checkout.
    #[arg(long)]
    sdk_path: Option<PathBuf>,
}

pub fn run(Args { name, dir, sdk_path }: Args) -> anyhow::Result<ExitCode> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid {
        anyhow::bail!(
            "{name:?} is not a crate name: use lowercase letters, digits, `-` and `_`, starting with a letter"
        );
    }
    let sdk = find_sdk(sdk_path)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let crate_dir = if dir == Path::new(".") { PathBuf::from(&name) } else { dir.join(&name) };
    if crate_dir.exists() {
        anyhow::bail!("{} exists already: choose another name, or --dir", crate_dir.display());
    }
    let absolute_crate = std::path::absolute(&crate_dir)?;
    let sdk_dependency = relative(&sdk, &absolute_crate).unwrap_or_else(|| sdk.clone());
    let sdk_dependency = sdk_dependency.to_string_lossy().replace('\\', "/");
    let files = [
        ("Cargo.toml", CARGO_TOML.replace("{{name}}", &name).replace("{{sdk_path}}", &sdk_dependency)),
        ("src/lib.rs", LIB_RS.replace("{{name}}", &name)),
        ("fixtures/basic.ndjson", FIXTURE.to_owned()),
        (".gitignore", GITIGNORE.to_owned()),
    ];
    for (file, content) in files {
        let path = crate_dir.join(file);
        std::fs::create_dir_all(path.parent().expect("a file in the crate"))?;
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    }
    // The repository's lock file pins the SDK's dependencies to the versions it was tested with;
    // cargo drops what the plugin does not use.
    if let Some(lock) = sdk.parent().map(|repository| repository.join("Cargo.lock")).filter(|lock| lock.is_file()) {
        std::fs::copy(&lock, crate_dir.join("Cargo.lock")).with_context(|| format!("copying {}", lock.display()))?;
    }
    println!("created the plugin crate {} (SDK: {})", crate_dir.display(), sdk.display());
    println!("next:");
    println!("  cd {}", crate_dir.display());
    println!("  cargo test                                   # the rules, natively, and the fixtures");
    println!("  commission-host plugin build                 # the component");
    println!(
        "  commission-host plugin test target/wasm32-wasip2/plugin/{}.wasm fixtures/basic.ndjson",
        name.replace('-', "_")
    );
    Ok(ExitCode::SUCCESS)
}

/// The SDK directory: given, else found above the current directory, else the one this binary
/// was built beside.
fn find_sdk(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let is_sdk = |dir: &Path| {
        std::fs::read_to_string(dir.join("Cargo.toml"))
            .is_ok_and(|manifest| manifest.contains("name = \"commission-plugin-sdk\""))
    };
    if let Some(given) = given {
        let given = std::path::absolute(&given)?;
        if !is_sdk(&given) {
            anyhow::bail!(
                "{} is not the SDK: give the `plugin-sdk` directory of a commission-host checkout",
                given.display()
            );
        }
        return Ok(given);
    }
    let current = std::env::current_dir()?;
    let built_beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let candidates = current.ancestors().map(|dir| dir.join("plugin-sdk")).chain([built_beside.join("plugin-sdk")]);
    for candidate in candidates {
        if is_sdk(&candidate) {
            return Ok(normalize(&std::path::absolute(&candidate)?));
        }
    }
    anyhow::bail!(
        "the plugin SDK was not found (it is not published yet): give the `plugin-sdk` directory of a \
         commission-host checkout with --sdk-path"
    )
}

/// `path` without `.` and `..` components (without touching the file system).
fn normalize(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                normal.pop();
            }
            other => normal.push(other),
        }
    }
    normal
}

/// `target` relative to the directory `base`, both absolute; `None` across roots.
fn relative(target: &Path, base: &Path) -> Option<PathBuf> {
    let (target, base) = (normalize(target), normalize(base));
    let common = target.components().zip(base.components()).take_while(|(a, b)| a == b).count();
    if common == 0 {
        return None;
    }
    let mut path = PathBuf::new();
    for _ in base.components().skip(common) {
        path.push("..");
    }
    for component in target.components().skip(common) {
        path.push(component);
    }
    Some(path)
}
