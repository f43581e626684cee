//! Released models by name. `facebook/dinov2-small` given where a weight file is expected
//! becomes a local file: the repository's weights (`model.safetensors`, else
//! `pytorch_model.bin`) with its `config.json` and `preprocessor_config.json` beside them,
//! downloaded once from the Hugging Face Hub into the Hub's own cache — the folder layout of
//! `huggingface_hub` (`models--owner--name/snapshots/<commit>/`), so Python tools and we share
//! one copy — and read from there afterwards without the network.
//!
//! The environment variables are the Hub's: `HF_ENDPOINT` (a mirror), `HF_HUB_CACHE` or
//! `HF_HOME` (where the cache lives), `HF_HUB_OFFLINE=1` (never touch the network) and
//! `HF_TOKEN` (gated or private repositories). Native only: the web viewer fetches with the
//! browser's `fetch` and keeps files in its Cache API.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The Hub's address unless `HF_ENDPOINT` says otherwise.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Weight files a repository may hold, in the order they are tried.
pub const WEIGHT_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// Files read beside the weights when the repository has them.
pub const SIDE_FILES: [&str; 2] = ["config.json", "preprocessor_config.json"];

/// Where and how repositories are fetched.
#[derive(Debug, Clone)]
pub struct Hub {
    /// Base address, without a trailing slash.
    pub endpoint: String,
    /// The cache folder (`…/huggingface/hub`).
    pub cache: PathBuf,
    /// Never use the network.
    pub offline: bool,
    /// Sent as a bearer token when set.
    pub token: Option<String>,
}

impl Hub {
    /// The settings the Hub's own tools read from the environment.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let cache = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| var("HF_HOME").map(|h| Path::new(&h).join("hub")))
            .or_else(|| {
                var("XDG_CACHE_HOME").map(|c| Path::new(&c).join("huggingface").join("hub"))
            })
            .unwrap_or_else(|| {
                let home = var("HOME")
                    .or_else(|| var("USERPROFILE"))
                    .unwrap_or_else(|| ".".into());
                Path::new(&home)
                    .join(".cache")
                    .join("huggingface")
                    .join("hub")
            });
        Self {
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| DEFAULT_ENDPOINT.into())
                .trim_end_matches('/')
                .to_string(),
            cache,
            offline: var("HF_HUB_OFFLINE").is_some_and(|v| {
                matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
            }),
            token: var("HF_TOKEN"),
        }
    }

    /// The repository's folder in the cache.
    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    /// The local weights of `repo`, fetched first if the cache lacks them: the path of the
    /// weight file, with the side files that exist beside it.
    pub fn weights(&self, repo: &str) -> Result<PathBuf> {
        if !is_repo_name(repo) {
            bail!("{repo:?} is not a Hub repository name (owner/name)");
        }
        let dir = self.repo_dir(repo);
        let commit = std::fs::read_to_string(dir.join("refs").join("main"))
            .ok()
            .map(|c| c.trim().to_string())
            .filter(|c| is_safe_component(c));
        // A complete earlier download is used as it is: released weights do not change.
        if let Some(commit) = &commit {
            let snapshot = dir.join("snapshots").join(commit);
            if let Some(w) = WEIGHT_FILES
                .iter()
                .map(|f| snapshot.join(f))
                .find(|p| p.is_file())
            {
                return Ok(w);
            }
        }
        if self.offline {
            bail!(
                "{repo} is not in the Hub cache {} and HF_HUB_OFFLINE is set: run once with the network (unset HF_HUB_OFFLINE), or give the file's path",
                self.cache.display()
            );
        }
        let mut commit = commit;
        let mut weights = None;
        for file in WEIGHT_FILES {
            if let Some(path) = self.fetch(repo, file, &mut commit)? {
                weights = Some(path);
                break;
            }
        }
        let Some(weights) = weights else {
            bail!(
                "{}/{repo} has neither {} nor {}: is the name right? (released models: facebook/dinov2-small, facebook/dino-vits16, …)",
                self.endpoint,
                WEIGHT_FILES[0],
                WEIGHT_FILES[1]
            );
        };
        for file in SIDE_FILES {
            self.fetch(repo, file, &mut commit)?;
        }
        Ok(weights)
    }

    /// Downloads one file into the snapshot of `commit` (learnt from the first answer when
    /// unknown); `None` when the repository has no such file.
    fn fetch(
        &self,
        repo: &str,
        file: &str,
        commit: &mut Option<String>,
    ) -> Result<Option<PathBuf>> {
        let url = format!("{}/{repo}/resolve/main/{file}", self.endpoint);
        let agent = ureq::AgentBuilder::new()
            .redirects(0)
            .timeout_connect(Duration::from_secs(30))
            // A download that stalls this long is given up; progress resets it.
            .timeout_read(Duration::from_secs(60))
            .build();
        let mut target = url.clone();
        let mut response = None;
        for _ in 0..6 {
            let mut req = agent.get(&target);
            // The token goes to the Hub only, not to the storage it redirects to.
            if let Some(t) = &self.token
                && target.starts_with(&self.endpoint)
            {
                req = req.set("Authorization", &format!("Bearer {t}"));
            }
            let r = match req.call() {
                Ok(r) => r,
                Err(ureq::Error::Status(404, _)) => return Ok(None),
                Err(ureq::Error::Status(code @ (401 | 403), _)) => bail!(
                    "{url}: the Hub answered {code}: {repo} is gated or private. Accept its licence at {}/{repo}, then set HF_TOKEN to a token of that account (or download the file by hand and give its path)",
                    self.endpoint
                ),
                Err(ureq::Error::Status(code, r)) => {
                    bail!("{url}: the Hub answered {code} {}", r.status_text())
                }
                Err(e) => bail!(
                    "fetching {url}: {e}. Check the network (HF_ENDPOINT for a mirror), or set HF_HUB_OFFLINE=1 to use the cache only"
                ),
            };
            if commit.is_none()
                && let Some(c) = r.header("x-repo-commit").filter(|c| is_safe_component(c))
            {
                *commit = Some(c.to_string());
            }
            if (300..400).contains(&r.status()) {
                let location = r
                    .header("location")
                    .with_context(|| format!("{target}: a redirect without a Location"))?;
                target = if location.starts_with("http://") || location.starts_with("https://") {
                    location.to_string()
                } else if location.starts_with('/') {
                    format!("{}{location}", origin(&target))
                } else {
                    bail!("{target}: cannot follow the redirect to {location}");
                };
                continue;
            }
            response = Some(r);
            break;
        }
        let response = response.with_context(|| format!("{url}: too many redirects"))?;
        let commit = commit.get_or_insert_with(|| "main".to_string()).clone();
        let dir = self.repo_dir(repo);
        let snapshot = dir.join("snapshots").join(&commit);
        std::fs::create_dir_all(&snapshot)
            .with_context(|| format!("creating the Hub cache folder {}", snapshot.display()))?;
        let path = snapshot.join(file);
        let expected: Option<u64> = response
            .header("content-length")
            .and_then(|v| v.parse().ok());
        let tmp = snapshot.join(format!(".{file}.{}.incomplete", std::process::id()));
        let result = (|| -> Result<()> {
            let mut out = std::fs::File::create(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            let bar = match expected {
                Some(n) if n > 1 << 20 => {
                    let bar = indicatif::ProgressBar::new(n);
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{msg} {bar:30} {bytes}/{total_bytes} ({bytes_per_sec}) ETA {eta}",
                        )
                        .expect("valid template"),
                    );
                    bar.set_message(format!("{repo}/{file}"));
                    bar
                }
                _ => indicatif::ProgressBar::hidden(),
            };
            let mut reader = response.into_reader();
            let mut buf = vec![0u8; 1 << 16];
            let mut got = 0u64;
            loop {
                let n = reader.read(&mut buf).with_context(|| {
                    format!("downloading {url} (cut off after {got} bytes); run the command again")
                })?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n])
                    .with_context(|| format!("writing {} (is the disk full?)", tmp.display()))?;
                got += n as u64;
                bar.set_position(got);
            }
            bar.finish_and_clear();
            if let Some(n) = expected
                && n != got
            {
                bail!("downloading {url}: {got} of {n} bytes arrived; run the command again");
            }
            out.sync_all()
                .with_context(|| format!("flushing {}", tmp.display()))?;
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let refs = dir.join("refs");
        std::fs::create_dir_all(&refs).with_context(|| format!("creating {}", refs.display()))?;
        std::fs::write(refs.join("main"), &commit)
            .with_context(|| format!("writing {}", refs.join("main").display()))?;
        log::info!("fetched {repo}/{file} into {}", path.display());
        Ok(Some(path))
    }
}

/// `scheme://host[:port]` of an absolute URL.
fn origin(url: &str) -> &str {
    let after = url.find("://").map_or(0, |i| i + 3);
    url[after..].find('/').map_or(url, |i| &url[..after + i])
}

/// Whether `spec` has the form of a Hub repository, `owner/name`.
pub fn is_repo_name(spec: &str) -> bool {
    let mut parts = spec.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    [owner, name].iter().all(|p| {
        !p.is_empty()
            && p.len() <= 96
            && !p.starts_with(['.', '-'])
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    }) && !spec.contains("..")
}

/// A folder name that cannot climb out of the cache.
fn is_safe_component(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Hub {
    /// `spec` itself when it is a path that exists (or does not look like a repository
    /// name), else the local weights of the Hub repository it names, fetched if needed.
    pub fn local_or_fetch(&self, spec: &Path) -> Result<PathBuf> {
        if spec.exists() {
            return Ok(spec.to_path_buf());
        }
        match spec.to_str().filter(|s| is_repo_name(s)) {
            Some(repo) => self.weights(repo).with_context(|| {
                format!("{repo} is no file here, so it was taken for a Hub repository")
            }),
            None => Ok(spec.to_path_buf()),
        }
    }
}

/// [`Hub::local_or_fetch`] with the settings of the environment ([`Hub::from_env`]).
pub fn local_or_fetch(spec: &Path) -> Result<PathBuf> {
    Hub::from_env().local_or_fetch(spec)
}
