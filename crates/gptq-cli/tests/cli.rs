//! The `gptq` command, end to end. The SmolLM2 pipeline test (all 30 layers, a few short
//! windows, then reload and evaluate) needs ../shared and skips with a message without it;
//! the error tests run everywhere.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn gptq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gptq"))
        .args(args)
        .output()
        .expect("the gptq binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("gptq-cli-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn shared() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    if p.join("README.md").is_file() {
        Some(p)
    } else {
        gptq_core::testing::announce_skip(
            "../shared not found (the SmolLM2 model and WikiText-2 live there)",
        );
        None
    }
}

/// The SmolLM2 Hugging Face checkpoint, made once by shared/tools/smollm2-hf.
fn smollm2(shared: &Path) -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("GPTQ_SMOLLM2_HF") {
            return PathBuf::from(d);
        }
        let dest = Path::new(env!("CARGO_TARGET_TMPDIR")).join("smollm2-hf");
        let out = Command::new(shared.join("tools/smollm2-hf"))
            .arg(&dest)
            .output()
            .expect("python3 runs");
        assert!(out.status.success(), "smollm2-hf failed: {}", stderr(&out));
        dest
    })
}

fn perplexity(out: &Output) -> f64 {
    assert!(out.status.success(), "gptq eval failed: {}", stderr(out));
    let text = stdout(out);
    let line = text
        .lines()
        .find(|l| l.starts_with("perplexity"))
        .expect("a perplexity line");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn quantize_reload_and_evaluate_smollm2() {
    let Some(shared) = shared() else { return };
    let model = smollm2(&shared);
    let dir = scratch("pipeline");
    let out = dir.join("q4g64");
    let report = dir.join("report.json");
    let calib = shared.join("data/calib/smollm2-wikivalid-128x512.json");
    let text = shared.join("data/wikitext2/wikitext2-test-joined.txt");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let run = gptq(&[
        "quantize",
        "--model",
        &s(model),
        "--calib",
        &s(&calib),
        "--out",
        &s(&out),
        "--bits",
        "4",
        "--group-size",
        "64",
        "--sym",
        "--nsamples",
        "4",
        "--seqlen",
        "128",
        "--report",
        &s(&report),
    ]);
    assert!(run.status.success(), "quantize failed: {}", stderr(&run));
    // Standard error is a pipe here, not a terminal: progress comes as plain lines.
    assert!(
        stderr(&run).contains("quantizing layers: 30/30 ("),
        "{}",
        stderr(&run)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let modules = json["modules"].as_array().unwrap();
    assert_eq!(modules.len(), 30 * 7);
    assert!(
        modules
            .iter()
            .all(|m| m["loss"].as_f64().is_some_and(f64::is_finite))
    );
    assert!(json["totals"]["peak_memory_bytes"].as_u64().unwrap() < 2 << 30);
    // The prediction made before the run: the activations of its tokens at least.
    let predicted = &json["totals"]["predicted_memory"];
    let tokens = json["tokens"].as_u64().unwrap();
    assert!(predicted["activations"].as_u64().unwrap() >= tokens * 4 * (576 + 1536));
    assert!(predicted["peak"].as_u64().unwrap() < 2 << 30);
    assert!(stderr(&run).contains("needs about"), "{}", stderr(&run));
    // The measured peak is printed beside the prediction.
    assert!(
        stdout(&run).contains("MiB resident (predicted: "),
        "{}",
        stdout(&run)
    );

    let inspect = gptq(&["inspect", &s(&out), "--verify"]);
    assert!(inspect.status.success(), "{}", stderr(&inspect));
    assert!(
        stdout(&inspect).contains("210 of 210 linears packed"),
        "{}",
        stdout(&inspect)
    );

    let args = |m: &Path| {
        vec![
            "eval".to_string(),
            "--model".into(),
            s(m),
            "--text".into(),
            s(&text),
            "--windows".into(),
            "2".into(),
            "--seqlen".into(),
            "128".into(),
        ]
    };
    let fp = perplexity(
        &Command::new(env!("CARGO_BIN_EXE_gptq"))
            .args(args(model))
            .output()
            .unwrap(),
    );
    let q = perplexity(
        &Command::new(env!("CARGO_BIN_EXE_gptq"))
            .args(args(&out))
            .output()
            .unwrap(),
    );
    println!("full precision {fp:.3}, 4-bit g64 {q:.3}");
    assert!(
        fp > 1.0 && q > fp * 0.95 && q < fp * 1.5,
        "fp {fp}, quantized {q}"
    );

    // Writing over an existing output needs --overwrite.
    let again = gptq(&[
        "quantize",
        "--model",
        &s(model),
        "--calib",
        &s(&calib),
        "--out",
        &s(&out),
        "--nsamples",
        "1",
    ]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("--overwrite"), "{}", stderr(&again));

    // A text shorter than one window.
    let short = dir.join("short.txt");
    std::fs::write(&short, "just a few words").unwrap();
    let e = gptq(&["eval", "--model", &s(model), "--text", &s(&short)]);
    one_line_error(
        &e,
        &format!("{} has 4 tokens, fewer than one window", short.display()),
    );

    // A text with fewer windows than asked for: evaluated, with a warning.
    let few = dir.join("few.txt");
    let head: String = std::fs::read_to_string(&text)
        .unwrap()
        .chars()
        .take(3000)
        .collect();
    std::fs::write(&few, head).unwrap();
    let e = gptq(&[
        "eval",
        "--model",
        &s(model),
        "--text",
        &s(&few),
        "--seqlen",
        "128",
        "--windows",
        "50",
    ]);
    assert!(e.status.success(), "{}", stderr(&e));
    assert!(
        stderr(&e).contains("fewer than --windows 50: evaluating those"),
        "{}",
        stderr(&e)
    );
}

fn one_line_error(out: &Output, needle: &str) {
    assert!(!out.status.success(), "expected a failure");
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "{err}"
    );
}

#[test]
fn user_errors_end_with_one_line_that_names_the_fix() {
    let dir = scratch("errors");
    let d = dir.to_str().unwrap();
    one_line_error(
        &gptq(&["eval", "--model", &format!("{d}/nothing"), "--text", "x"]),
        "config.json not found",
    );
    std::fs::create_dir_all(dir.join("gpt2")).unwrap();
    std::fs::write(dir.join("gpt2/config.json"), r#"{"model_type": "gpt2"}"#).unwrap();
    one_line_error(
        &gptq(&["inspect", &format!("{d}/gpt2")]),
        "unsupported architecture `gpt2`",
    );
    // Flags are checked before the model is opened.
    let model = format!("{d}/gpt2");
    let out = format!("{d}/o");
    for (flag, value, expected) in [
        ("--bits", "9", "bits must be between 2 and 8"),
        ("--group-size", "0", "group size 0"),
        ("--damp", "2", "2% is 0.02"),
        // A negative value is refused for what it is, not taken for an unknown flag `-0`.
        ("--damp", "-0.1", "must be in [0, 1)"),
    ] {
        let args = [
            "quantize", "--model", &model, "--calib", "c.txt", "--out", &out, flag, value,
        ];
        one_line_error(&gptq(&args), expected);
    }
    // Flags clap rejects exit non-zero with its usage message.
    let bad = gptq(&["quantize", "--bogus"]);
    assert!(!bad.status.success());
    let negative = gptq(&["quantize", "--model", &model, "--seed", "-3"]);
    assert!(!negative.status.success());
    assert!(
        stderr(&negative).contains("invalid value '-3' for '--seed"),
        "{}",
        stderr(&negative)
    );
}

#[test]
fn mistakes_in_where_results_go_fail_before_any_work() {
    let model = gptq_model::testing::Tiny::default().write(11);
    let dir = scratch("early");
    let d = dir.to_str().unwrap();
    let m = model.path().to_str().unwrap();
    // The calibration file does not exist, so an error about the output shows that the output
    // was checked before calibration started.
    let quantize = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "quantize",
            "--model",
            m,
            "--calib",
            "missing-calibration.txt",
            "--out",
            out,
            "--group-size",
            "16",
        ];
        args.extend_from_slice(extra);
        gptq(&args)
    };
    one_line_error(&quantize(&format!("{d}/fresh"), &[]), "missing-calibration");

    std::fs::create_dir(dir.join("existing")).unwrap();
    one_line_error(&quantize(&format!("{d}/existing"), &[]), "--overwrite");
    std::fs::write(dir.join("file"), "x").unwrap();
    one_line_error(&quantize(&format!("{d}/file/q"), &[]), "is not a directory");
    one_line_error(&quantize(&format!("{m}/q"), &[]), "source model");
    let report = format!("{d}/nowhere/run.json");
    one_line_error(
        &quantize(&format!("{d}/fresh"), &["--report", &report]),
        "does not exist",
    );
    one_line_error(
        &quantize(&format!("{d}/fresh"), &["--report", d]),
        "is a directory",
    );
    let mut left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["existing", "file"], "nothing else was created");
}

/// `gptq quantize` of a tiny random model in `dir`, on two calibration windows of 8 tokens,
/// into `dir/out`, 4-bit in groups of 16, with `flags` added.
fn quantize_tiny(dir: &Path, seed: u64, out: &str, flags: &[&str]) -> Output {
    let model = dir.join("model");
    if !model.is_dir() {
        let tiny = gptq_model::testing::Tiny::default().write(seed);
        std::fs::rename(tiny.path(), &model).unwrap();
    }
    let calib = dir.join("windows.json");
    std::fs::write(
        &calib,
        r#"{"windows": [[1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16]]}"#,
    )
    .unwrap();
    let out = dir.join(out);
    let mut args = vec![
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--calib",
        calib.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--group-size",
        "16",
    ];
    args.extend(flags);
    gptq(&args)
}

#[test]
fn calibration_that_falls_short_of_the_flags_is_warned_about() {
    let dir = scratch("short-calib");
    let out = dir.join("q");
    let flags = ["--nsamples", "3", "--seqlen", "16", "--damp", "0"];
    let run = quantize_tiny(&dir, 12, "q", &flags);
    assert!(run.status.success(), "{}", stderr(&run));
    let err = stderr(&run);
    for expected in [
        "holds 2 calibration samples, fewer than --nsamples 3",
        "hold at most 8 tokens, fewer than --seqlen 16",
        "damping was raised above damp_percent 0 for 14 of 14 linears",
    ] {
        assert!(err.contains(expected), "no `{expected}` in:\n{err}");
    }
    assert!(out.join("config.json").is_file());
}

#[test]
fn resume_state_and_leftovers_of_killed_runs_are_handled() {
    let dir = scratch("resume");
    let quantize = |out: &str, extra: &[&str]| {
        let mut flags = vec!["--nsamples", "2", "--seqlen", "8"];
        flags.extend(extra);
        quantize_tiny(&dir, 13, out, &flags)
    };

    // A finished --resume run leaves no state behind.
    let run = quantize("a", &["--resume"]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(dir.join("a").join("model.safetensors").is_file());
    assert!(!dir.join(".a.resume").exists());

    // A state left by an interrupted run: named, left alone without --resume; with --resume,
    // read (here damaged, so refused with the way out).
    let state = dir.join(".b.resume");
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join("state.json"), "{").unwrap();
    let run = quantize("b", &[]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("holds the state of an interrupted run: pass --resume"),
        "{}",
        stderr(&run)
    );
    assert!(state.join("state.json").is_file());
    let run = quantize("c", &[]);
    assert!(run.status.success());
    std::fs::rename(&state, dir.join(".c2.resume")).unwrap();
    let run = quantize("c2", &["--resume"]);
    assert!(!run.status.success());
    let last = stderr(&run).lines().last().unwrap_or_default().to_string();
    assert!(
        last.starts_with("error: the run state saved in")
            && last.ends_with("delete that directory to start the run over"),
        "{}",
        stderr(&run)
    );

    // The staging directory of a killed run is removed by the next run.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    let staging = dir.join(format!(".d.partial-{}", child.id()));
    std::fs::create_dir(&staging).unwrap();
    let run = quantize("d", &[]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(stderr(&run).contains("note: removed"), "{}", stderr(&run));
    assert!(!staging.exists());
}

#[test]
fn inspect_describes_rotary_embeddings_and_head_norms() {
    let tiny = gptq_model::testing::Tiny::default();
    let model = tiny.write(13);
    let mut config = tiny.config();
    config["rope_parameters"] = serde_json::json!({"rope_type": "llama3", "rope_theta": 5e5,
        "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192});
    config.as_object_mut().unwrap().remove("rope_theta");
    gptq_model::testing::write_config(model.path(), &config);
    let out = gptq(&["inspect", model.path().to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(
            "rotary embeddings: base 500000, llama3 scaling (factor 8, low/high frequency \
             factors 1/4, original context 8192)"
        ),
        "{}",
        stdout(&out)
    );

    let qwen3 = gptq_model::testing::Tiny {
        model_type: "qwen3",
        ..tiny
    };
    let model = qwen3.write(13);
    let out = gptq(&["inspect", model.path().to_str().unwrap()]);
    assert!(
        stdout(&out).contains("head dim 8 (query and key heads RMS-normed)"),
        "{}",
        stdout(&out)
    );

    let smollm3 = gptq_model::testing::Tiny {
        model_type: "smollm3",
        layers: 4,
        ..tiny
    };
    let model = smollm3.write(13);
    let out = gptq(&["inspect", model.path().to_str().unwrap()]);
    assert!(
        stdout(&out).contains("base 10000, no scaling (none in layers 1, 3)"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn bf16_and_int8_products_run_and_are_recorded() {
    let dir = scratch("bf16");
    for products in ["bf16", "int8"] {
        let report = dir.join(format!("report-{products}.json"));
        let out = format!("q-{products}");
        let flags = [
            "--products",
            products,
            "--hessian",
            "bf16",
            "--report",
            report.to_str().unwrap(),
        ];
        let run = quantize_tiny(&dir, 13, &out, &flags);
        assert!(run.status.success(), "{}", stderr(&run));
        assert!(dir.join(&out).join("config.json").is_file());
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        assert_eq!(report["backend"], format!("cpu-{products}"), "{report}");
        // The GPU runs its own products in f32: asking for others there is refused before any
        // work.
        let refused = quantize_tiny(
            &dir,
            13,
            "q2",
            &["--device", "cuda", "--products", products],
        );
        one_line_error(&refused, &format!("--products {products} is a CPU option"));
        assert!(!dir.join("q2").exists());
    }
}

#[test]
fn default_products_are_the_fastest_kernels_and_are_recorded() {
    let dir = scratch("auto");
    let report = dir.join("report.json");
    let run = quantize_tiny(&dir, 13, "q", &["--report", report.to_str().unwrap()]);
    assert!(run.status.success(), "{}", stderr(&run));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    // What the CPU's flags say the kernels need, read independently of the kernels' own check
    // (none off x86-64 Linux).
    let has = |flags: &[&str]| gptq_core::testing::cpu_has(flags).unwrap_or(false);
    let bf16 = has(&["avx512f", "avx512bw", "avx512_bf16"]);
    let vnni = has(&["avx512f", "avx512bw", "avx512_vnni"]);
    let (products, hessian) = match (bf16, vnni) {
        (true, true) => ("int8", "bf16"),
        (true, false) => ("f32", "bf16"),
        _ => ("f32", "f32"),
    };
    assert_eq!(report["products"], products, "{report}");
    assert_eq!(report["hessian"], hessian, "{report}");
    let said = format!("computing forward products in {products} and Hessians in {hessian} (auto");
    assert!(stderr(&run).contains(&said), "{}", stderr(&run));

    // f32 stays selectable, and then nothing says auto.
    let run = quantize_tiny(&dir, 13, "q32", &["--products", "f32", "--hessian", "f32"]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("computing forward products in f32 and Hessians in f32\n"),
        "{}",
        stderr(&run)
    );
}
