//! The official releases published on the Hugging Face Hub, and how their files are found:
//! what the web viewer's model menu offers and fetches (the Hub answers browsers with CORS
//! headers, as transformers.js relies on).

/// One release on the Hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubModel {
    /// Repository, `owner/name`.
    pub repo: &'static str,
    /// What users call it.
    pub label: &'static str,
    /// Size of the f32 weights in MB (10⁶ bytes), shown before the download.
    pub megabytes: u32,
    /// Whether the Hub wants a licence click first: the browser cannot fetch it anonymously,
    /// the user downloads it by hand and drops it on the page.
    pub gated: bool,
}

/// Default Hub address; `?hub=` on the web page points elsewhere (a mirror, a test server).
pub const HUB: &str = "https://huggingface.co";

/// Weight file names a repository may hold, in the order they are tried (newer repos have
/// safetensors; the DINO v1 ports only `pytorch_model.bin`).
pub const WEIGHT_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// The releases in the menu. Sizes: parameters × 4 bytes (f32 files).
pub const HUB_MODELS: &[HubModel] = &[
    HubModel {
        repo: "facebook/dino-vits16",
        label: "DINO ViT-S/16",
        megabytes: 87,
        gated: false,
    },
    HubModel {
        repo: "facebook/dino-vits8",
        label: "DINO ViT-S/8",
        megabytes: 87,
        gated: false,
    },
    HubModel {
        repo: "facebook/dino-vitb16",
        label: "DINO ViT-B/16",
        megabytes: 343,
        gated: false,
    },
    HubModel {
        repo: "facebook/dino-vitb8",
        label: "DINO ViT-B/8",
        megabytes: 343,
        gated: false,
    },
    HubModel {
        repo: "facebook/dinov2-small",
        label: "DINOv2 ViT-S/14",
        megabytes: 88,
        gated: false,
    },
    HubModel {
        repo: "facebook/dinov2-with-registers-small",
        label: "DINOv2 ViT-S/14, 4 registers",
        megabytes: 88,
        gated: false,
    },
    HubModel {
        repo: "facebook/dinov2-base",
        label: "DINOv2 ViT-B/14",
        megabytes: 346,
        gated: false,
    },
    HubModel {
        repo: "facebook/dinov2-with-registers-base",
        label: "DINOv2 ViT-B/14, 4 registers",
        megabytes: 346,
        gated: false,
    },
    HubModel {
        repo: "facebook/dinov3-vits16-pretrain-lvd1689m",
        label: "DINOv3 ViT-S/16",
        megabytes: 86,
        gated: true,
    },
    HubModel {
        repo: "facebook/dinov3-vitb16-pretrain-lvd1689m",
        label: "DINOv3 ViT-B/16",
        megabytes: 343,
        gated: true,
    },
];

impl HubModel {
    /// The release with this repository name, if it is in the menu.
    pub fn find(repo: &str) -> Option<&'static HubModel> {
        HUB_MODELS.iter().find(|m| m.repo == repo)
    }

    /// The repository's page, where gated releases are unlocked and downloaded by hand.
    pub fn page(&self) -> String {
        format!("{HUB}/{}", self.repo)
    }

    /// The download address of `file` on the Hub at `host` (`resolve/main`, which redirects
    /// large files to the Hub's CDN).
    pub fn resolve_url(&self, host: &str, file: &str) -> String {
        resolve_url(host, self.repo, file)
    }
}

/// `{host}/{repo}/resolve/main/{file}`, whatever the slashes at the seam.
pub fn resolve_url(host: &str, repo: &str, file: &str) -> String {
    format!("{}/{repo}/resolve/main/{file}", host.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_lookups() {
        let m = HubModel::find("facebook/dinov2-with-registers-small").unwrap();
        assert_eq!(
            m.resolve_url("https://huggingface.co/", "config.json"),
            "https://huggingface.co/facebook/dinov2-with-registers-small/resolve/main/config.json"
        );
        assert_eq!(
            m.page(),
            "https://huggingface.co/facebook/dinov2-with-registers-small"
        );
        assert!(HubModel::find("facebook/unknown").is_none());
        assert!(
            HUB_MODELS
                .iter()
                .filter(|m| m.gated)
                .all(|m| m.label.starts_with("DINOv3"))
        );
        let repos: std::collections::BTreeSet<_> = HUB_MODELS.iter().map(|m| m.repo).collect();
        assert_eq!(
            repos.len(),
            HUB_MODELS.len(),
            "a repository is listed twice"
        );
    }

    #[test]
    fn sizes_match_the_architectures() {
        use crate::config::VitConfig;
        // The menu's sizes are the f32 weights of the presets (registers add 6 kB).
        let mb = |c: VitConfig| (c.num_params() as f64 * 4.0 / 1e6).round() as u32;
        assert_eq!(mb(VitConfig::dinov2("s", 0).unwrap()), 88);
        assert_eq!(mb(VitConfig::dinov2("b", 4).unwrap()), 346);
        assert_eq!(mb(VitConfig::dinov3("s").unwrap()), 86);
    }
}
