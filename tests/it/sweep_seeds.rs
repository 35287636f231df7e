//! `dataflow sweep --until-ci` (issue 23, item 3: add seeds until the answer is known)
//! and `--vary` (issue 18, finding 2.6: each value of a stage key is a system of its own).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Output};

use crate::support::{bin, make_photos, num, read_csv, root, text_only_graph};

/// Four 192x128 crops of test photos and the text-only Multi-SC graph on them.
fn setup(dir: &Path) -> std::path::PathBuf {
    let full = dir.join("full-size");
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for n in make_photos(&full, 4) {
        let img = image::open(full.join(format!("{n}.png"))).unwrap().to_rgb8();
        let crop = image::imageops::crop_imm(&img, 288, 192, 192, 128).to_image();
        crop.save(images.join(format!("{n}.png"))).unwrap();
    }
    let graph = dir.join("text-only.toml");
    std::fs::write(&graph, text_only_graph(&images, 10.0, 1, "symspell")).unwrap();
    graph
}

fn sweep(graph: &Path, out: &Path, args: &[&str]) -> Output {
    let o = Command::new(bin())
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .arg("sweep")
        .arg(graph)
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&o.stderr));
    o
}

/// Seeds in results.csv per (graph, snr).
fn seeds_seen(rows: &[HashMap<String, String>]) -> HashMap<(String, String), usize> {
    let mut m: HashMap<(String, String), BTreeSet<String>> = HashMap::new();
    for r in rows {
        m.entry((r["graph"].clone(), r["snr_db"].clone()))
            .or_default()
            .insert(r["seed"].clone());
    }
    m.into_iter().map(|(k, v)| (k, v.len())).collect()
}

#[test]
fn until_ci_stops_earlier_where_the_answer_is_known() {
    let tmp = tempfile::tempdir().unwrap();
    let graph = setup(tmp.path());
    let out = tmp.path().join("out");
    let args = [
        "--snr",
        "-1,14",
        "--seeds",
        "2",
        "--max-seeds",
        "6",
        "--until-ci",
        "wer=0.02",
    ];
    let o = sweep(&graph, &out, &args);
    assert_eq!(o.status.code(), Some(0), "sweep failed");
    let rows = read_csv(&out.join("results.csv"));
    let seen = seeds_seen(&rows);
    let at = |snr: &str| seen[&("text-only".to_string(), snr.to_string())];
    // At 14 dB BPSK every word arrives: the interval is 0 wide after the least seeds.
    assert_eq!(at("14"), 2, "{seen:?}");
    assert!(rows
        .iter()
        .filter(|r| r["snr_db"] == "14")
        .all(|r| num(r, "wer") == 0.0));
    // At -1 dB the WER scatters over images and seeds: more seeds were needed.
    assert!(at("-1") > at("14"), "{seen:?}");
    // summary.csv records the seeds of each point, and n = images × seeds.
    let summary = read_csv(&out.join("summary.csv"));
    for s in summary.iter().filter(|s| s["metric"] == "wer") {
        let seeds = seen[&(s["graph"].clone(), s["snr_db"].clone())];
        assert_eq!(num(s, "seeds") as usize, seeds, "{s:?}");
        assert_eq!(num(s, "n") as usize, 4 * seeds, "{s:?}");
        // The stopping rule held, or the point ran out of seeds.
        let half = (num(s, "ci95_high") - num(s, "ci95_low")) / 2.0;
        assert!(half < 0.02 || seeds == 6, "{s:?}");
    }
    // Bands never leave [0, ...) for WER, [0, 1] for BLEU.
    for s in &summary {
        if s["metric"] == "wer" || s["metric"].starts_with("bleu") {
            assert!(num(s, "ci95_low") >= 0.0, "{s:?}");
        }
        if s["metric"].starts_with("bleu") {
            assert!(num(s, "ci95_high") <= 1.0, "{s:?}");
        }
    }
    // Resumed with the same arguments: nothing runs again, same seeds.
    let before = std::fs::read(out.join("summary.csv")).unwrap();
    let o = sweep(&graph, &out, &args);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("were already done"));
    assert_eq!(std::fs::read(out.join("summary.csv")).unwrap(), before);
}

#[test]
fn vary_makes_each_value_a_system_with_paired_differences() {
    let tmp = tempfile::tempdir().unwrap();
    let graph = setup(tmp.path());
    let out = tmp.path().join("out");
    let args = [
        "--snr",
        "2",
        "--seeds",
        "1",
        "--vary",
        "stage.correct.model=symspell,noisy_channel",
        "--reference",
        "text-only[correct.model=symspell]",
    ];
    let o = sweep(&graph, &out, &args);
    assert_eq!(o.status.code(), Some(0), "sweep failed");
    let rows = read_csv(&out.join("results.csv"));
    let systems: BTreeSet<&str> = rows.iter().map(|r| r["graph"].as_str()).collect();
    assert_eq!(
        systems,
        BTreeSet::from([
            "text-only[correct.model=noisy_channel]",
            "text-only[correct.model=symspell]"
        ])
    );
    // The same received texts (same seed), corrected by two different models.
    let by = |s: &str| -> Vec<&HashMap<String, String>> { rows.iter().filter(|r| r["graph"] == s).collect() };
    let (a, b) = (
        by("text-only[correct.model=symspell]"),
        by("text-only[correct.model=noisy_channel]"),
    );
    assert_eq!(a.len(), 4);
    assert!(a
        .iter()
        .zip(&b)
        .all(|(x, y)| x["image"] == y["image"] && x["wer_received"] == y["wer_received"]));
    assert!(a.iter().zip(&b).any(|(x, y)| x["wer"] != y["wer"]));
    // Paired differences of noisy_channel against symspell, per image.
    let paired = read_csv(&out.join("paired.csv"));
    let wer = paired
        .iter()
        .find(|p| p["metric"] == "wer")
        .expect("paired.csv has wer");
    assert_eq!(wer["graph"], "text-only[correct.model=noisy_channel]");
    assert_eq!(num(wer, "n"), 4.0);
    let diff: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| num(y, "wer") - num(x, "wer"))
        .sum::<f64>()
        / 4.0;
    assert!((num(wer, "mean_diff") - diff).abs() < 1e-6);
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.contains("Paired differences") && html.contains("text-only[correct.model=noisy_channel]"));
    assert!(out.join("plots/wer-paired.png").is_file());

    // A value the stage does not take is reported before any run, naming the system.
    let o = sweep(
        &graph,
        &tmp.path().join("bad"),
        &[
            "--snr",
            "2",
            "--seeds",
            "1",
            "--vary",
            "stage.correct.model=symspell,nonsense",
        ],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("text-only[correct.model=nonsense]"), "{stderr}");
    assert!(!tmp.path().join("bad/runs").exists());
    // A key of a stage no graph has.
    let o = sweep(
        &graph,
        &tmp.path().join("bad2"),
        &["--snr", "2", "--vary", "stage.reconstruct2.steps=10,20"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no swept graph has that stage"));
}

/// `--set stage.<id>.…` reaches the graphs that have stage `<id>` (one sweep can tune a
/// stage some of its graphs lack), and one that no graph has is refused before any run.
#[test]
fn set_reaches_the_graphs_that_have_the_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let graph = setup(tmp.path());
    let other = tmp.path().join("text-only-b.toml");
    let text = std::fs::read_to_string(&graph).unwrap();
    let renamed = text
        .replace("name = \"text-only\"", "name = \"text-only-b\"")
        .replace("[stage.correct]", "[stage.fix]")
        .replace("inputs = [\"correct\"]", "inputs = [\"fix\"]");
    std::fs::write(&other, renamed).unwrap();
    let out = tmp.path().join("both");
    let o = Command::new(bin())
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .args(["sweep"])
        .arg(&graph)
        .arg(&other)
        .args([
            "--snr",
            "20",
            "--seeds",
            "1",
            "--set",
            "stage.correct.model=noisy_channel",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    let rows = read_csv(&out.join("results.csv"));
    for g in ["text-only", "text-only-b"] {
        assert_eq!(rows.iter().filter(|r| r["graph"] == g).count(), 4, "{g}: {rows:?}");
    }
    let o = sweep(
        &graph,
        &tmp.path().join("nope"),
        &["--snr", "20", "--seeds", "1", "--set", "stage.nope.model=symspell"],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("`--set stage.nope.model=symspell`: no graph of this sweep has a stage `nope`"),
        "{stderr}"
    );
    assert!(!tmp.path().join("nope/runs").exists());
}
