//! Load + plan for 10,000 declarations (issue target: <= 100 ms), in two layouts: one file
//! per service, and 100 files of 100 services. Median of 7 runs each. Then what a reload
//! costs when one file changed: found by stamps, and named by inotify.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failed test"
)]
use std::collections::BTreeMap;
use std::time::Instant;

use unikerneld::decl::Loader;
use unikerneld::plan::{plan, Observed};

fn service(i: usize) -> String {
    format!(
        "unikernel \"svc{i}\" {{\n    image \"/usr/share/unikerneld/images/http\"\n    cmdline \"name=svc{i}\"\n    memory \"16M\"\n    net {{ expose {} guest=80 }}\n    restart \"always\"\n}}\n",
        10000 + i
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    const N: usize = 10_000;
    for (label, per_file) in [("10,000 files of 1", 1usize), ("100 files of 100", 100)] {
        let dir = std::env::temp_dir().join(format!("ukload-{per_file}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..N / per_file {
            let text: String = (0..per_file).map(|j| service(f * per_file + j)).collect();
            std::fs::write(dir.join(format!("f{f:05}.kdl")), text).unwrap();
        }
        let (mut load_ms, mut plan_ms, mut noop_ms) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..7 {
            // Dropped after the timing: the daemon keeps its loader (and `check` leaves
            // it to the process's end).
            let mut loader = Loader::default();
            let t = Instant::now();
            let loaded = loader.load_dir(&dir);
            load_ms.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(loaded.specs.len(), N);
            let t = Instant::now();
            let p = plan(&loaded.specs, &BTreeMap::new());
            plan_ms.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(p.actions.len(), N);
            let observed: BTreeMap<String, Observed> = loaded
                .specs
                .iter()
                .map(|(k, s)| {
                    (
                        k.clone(),
                        Observed {
                            spec_hash: s.hash(),
                            spec: None,
                        },
                    )
                })
                .collect();
            let t = Instant::now();
            assert!(plan(&loaded.specs, &observed).is_noop());
            noop_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        // A daemon restart: the loader is seeded with the declarations saved by the last
        // daemon (parsed), then the directory is loaded (read and hashed: unchanged).
        let saved: Vec<(std::ffi::OsString, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name(), std::fs::read_to_string(e.path()).unwrap())
            })
            .collect();
        let mut restart_ms = Vec::new();
        for _ in 0..7 {
            let files = saved.clone();
            let t = Instant::now();
            let mut loader = Loader::default();
            loader.seed(&dir, files);
            let loaded = loader.load_dir(&dir);
            restart_ms.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(loaded.specs.len(), N);
        }
        println!(
            "{label}: daemon restart (seed from the saved declarations, then load) {:.1} ms (median of 7)",
            median(restart_ms)
        );
        // The daemon's reloads: one loader, nothing changed / one file changed.
        let mut loader = Loader::default();
        loader.load_dir(&dir);
        let mut reload_ms = Vec::new();
        for i in 0..7 {
            if i % 2 == 1 {
                std::fs::write(dir.join("f00000.kdl"), service(0).replace("16M", "32M")).unwrap();
            }
            let t = Instant::now();
            let loaded = loader.load_dir(&dir);
            reload_ms.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(loaded.specs.len(), if i == 0 { N } else { N - per_file + 1 });
        }
        // What inotify drives: the named file alone, merged in place.
        let mut changed_ms = Vec::new();
        let named = std::collections::HashSet::from([std::ffi::OsString::from("f00000.kdl")]);
        for i in 0..7 {
            let memory = if i % 2 == 0 { "64M" } else { "32M" };
            std::fs::write(dir.join("f00000.kdl"), service(0).replace("16M", memory)).unwrap();
            let t = Instant::now();
            let loaded = loader.load_changed(&dir, &named);
            changed_ms.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(loaded.specs.len(), N - per_file + 1);
            let touched = loaded.touched.as_ref().expect("merged in place");
            assert_eq!(touched.iter().collect::<Vec<_>>(), ["svc0"]);
            assert_eq!(
                loaded.specs["svc0"].memory_bytes >> 20,
                if i % 2 == 0 { 64 } else { 32 }
            );
        }
        println!(
            "{label}: reload with at most one file changed {:.1} ms; with inotify's name for it {:.2} ms (medians of 7)",
            median(reload_ms),
            median(changed_ms)
        );
        let (l, p, n) = (median(load_ms), median(plan_ms), median(noop_ms));
        println!("{label}: load {l:.1} ms + plan from empty {p:.1} ms = {:.1} ms; plan when converged {n:.1} ms (median of 7)", l + p);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
