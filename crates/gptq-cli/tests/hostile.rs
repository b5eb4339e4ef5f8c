//! Hostile inputs and faults: each case once passed silently or destroyed data. Every test works
//! inside a directory it created under the target directory; none touches a device path.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use gptq_model::testing::{Tiny, TinyGptq, write_config, write_safetensors};
use safetensors::Dtype;

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

/// A fresh directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("gptq-hostile-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn one_line_error(out: &Output, needle: &str) {
    assert!(
        !out.status.success(),
        "expected a failure:\n{}",
        stderr(out)
    );
    let err = stderr(out);
    let last = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(
        last.starts_with("error: ") && last.contains(needle),
        "no `{needle}` in the last line of:\n{err}"
    );
}

/// A tiny random model in `dir/model` and two 8-token calibration windows in
/// `dir/windows.json`; returns the model directory.
fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    if !model.is_dir() {
        let tiny = Tiny::default().write(21);
        std::fs::rename(tiny.path(), &model).unwrap();
    }
    std::fs::write(
        dir.join("windows.json"),
        r#"{"windows": [[1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16]]}"#,
    )
    .unwrap();
    model
}

/// The arguments of `gptq quantize` of `model` on `dir/windows.json` into `out`, 4-bit in
/// groups of 16, with `flags` added.
fn quantize_args(dir: &Path, model: &Path, out: &Path, flags: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--calib",
        dir.join("windows.json").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--group-size",
        "16",
        "--nsamples",
        "2",
        "--seqlen",
        "8",
    ]
    .map(String::from)
    .to_vec();
    args.extend(flags.iter().map(|f| f.to_string()));
    args
}

fn quantize(dir: &Path, out: &Path, flags: &[&str]) -> Output {
    let model = tiny_model(dir);
    let args = quantize_args(dir, &model, out, flags);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    gptq(&args)
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Waits for `child` at most `limit`; kills it past that.
fn wait_at_most(mut child: Child, limit: Duration) -> Option<Output> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return Some(child.wait_with_output().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn an_out_that_is_not_a_directory_is_refused_untouched() {
    let dir = scratch("out-file");
    let file = dir.join("notes.txt");
    std::fs::write(&file, "my notes").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&file, dir.join("link")).unwrap();
    for out in ["notes.txt", "link"] {
        let run = quantize(&dir, &dir.join(out), &["--overwrite"]);
        one_line_error(&run, "exists and is not a directory");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "my notes");
    }
    let expected: &[&str] = if cfg!(unix) {
        &["link", "model", "notes.txt", "windows.json"]
    } else {
        &["model", "notes.txt", "windows.json"]
    };
    assert_eq!(listing(&dir), expected, "nothing was moved aside");
}

#[test]
fn overwrite_replaces_only_a_gptq_checkpoint() {
    let dir = scratch("overwrite");
    let folder = dir.join("folder");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("thesis.tex"), "years of work").unwrap();
    let run = quantize(&dir, &folder, &["--overwrite"]);
    one_line_error(&run, "is not a GPTQ checkpoint");
    assert_eq!(listing(&folder), ["thesis.tex"]);

    // A full-precision model is not a checkpoint to replace either.
    let run = quantize(&dir, &dir.join("other-model"), &[]);
    assert!(run.status.success(), "{}", stderr(&run));
    let fp = Tiny::default().write(5);
    let run = quantize(&dir, fp.path(), &["--overwrite"]);
    one_line_error(&run, "is not a GPTQ checkpoint");
    assert!(fp.path().join("model.safetensors").is_file());

    // What this tool wrote, and an empty directory, are replaced.
    let q = dir.join("q");
    for _ in 0..2 {
        let run = quantize(&dir, &q, &["--overwrite"]);
        assert!(run.status.success(), "{}", stderr(&run));
        assert!(q.join("model.safetensors").is_file());
    }
    let empty = dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let run = quantize(&dir, &empty, &["--overwrite"]);
    assert!(run.status.success(), "{}", stderr(&run));
    // A checkpoint holding a directory of the user's is not replaced.
    std::fs::create_dir(q.join("my-runs")).unwrap();
    let run = quantize(&dir, &q, &["--overwrite"]);
    one_line_error(&run, "is not a GPTQ checkpoint");
    assert!(q.join("my-runs").is_dir());
}

#[test]
fn thread_counts_are_bounded() {
    let dir = scratch("threads");
    let model = tiny_model(&dir);
    let args = quantize_args(&dir, &model, &dir.join("q"), &["--threads", "100000"]);
    let child = Command::new(env!("CARGO_BIN_EXE_gptq"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let run = wait_at_most(child, Duration::from_secs(120)).expect("finishes in two minutes");
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("--threads 100000 is more than"),
        "{}",
        stderr(&run)
    );
    let text = dir.join("text.txt");
    std::fs::write(&text, "one two three four five six seven eight nine ten").unwrap();
    let m = model.to_str().unwrap();
    let eval = gptq(&[
        "eval",
        "--model",
        m,
        "--text",
        text.to_str().unwrap(),
        "--threads",
        "100000",
    ]);
    assert!(
        stderr(&eval).contains("--threads 100000 is more than"),
        "{}",
        stderr(&eval)
    );
}

#[test]
fn a_resume_state_in_use_by_a_live_run_is_refused() {
    let dir = scratch("resume-lock");
    let state = dir.join(".q.resume");
    std::fs::create_dir(&state).unwrap();
    // A live process that is not gptq holds the lock.
    let mut holder = Command::new("sleep").arg("60").spawn().unwrap();
    std::fs::write(state.join("lock"), holder.id().to_string()).unwrap();
    let run = quantize(&dir, &dir.join("q"), &["--resume"]);
    let _ = holder.kill();
    let _ = holder.wait();
    one_line_error(
        &run,
        &format!("in use by another run (process {})", holder.id()),
    );
    assert!(!dir.join("q").exists());
    // Once its owner is gone, the lock is stale and the run goes on.
    let run = quantize(&dir, &dir.join("q"), &["--resume"]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(!state.exists(), "the finished run removed its state");
}

#[test]
fn a_second_run_on_the_same_out_is_refused() {
    let dir = scratch("same-out");
    let mut holder = Command::new("sleep").arg("60").spawn().unwrap();
    let staging = dir.join(format!(".q.partial-{}", holder.id()));
    std::fs::create_dir(&staging).unwrap();
    let run = quantize(&dir, &dir.join("q"), &[]);
    let _ = holder.kill();
    let _ = holder.wait();
    one_line_error(
        &run,
        &format!("another run (process {}) is writing", holder.id()),
    );
    assert!(staging.is_dir(), "the live run's directory is left alone");
}

/// The tensors of a tiny model, by name: shape and values.
type Tensors = std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)>;
type ConfigEdit = Box<dyn FnOnce(&mut serde_json::Value)>;
type TensorEdit = Box<dyn FnOnce(&mut Tensors)>;

/// A tiny model in `dir/name` whose config and tensors `config` and `edit` changed.
fn edited_model(
    dir: &Path,
    name: &str,
    config: impl FnOnce(&mut serde_json::Value),
    edit: impl FnOnce(&mut Tensors),
) -> PathBuf {
    let model = dir.join(name);
    std::fs::create_dir_all(&model).unwrap();
    let tiny = Tiny::default();
    let mut cfg = tiny.config();
    config(&mut cfg);
    write_config(&model, &cfg);
    let mut tensors = tiny.tensors(3);
    edit(&mut tensors);
    write_safetensors(&model.join("model.safetensors"), &tensors, Dtype::F32);
    model
}

#[test]
fn tensors_outside_the_layers_are_checked_before_the_work() {
    let dir = scratch("outside");
    tiny_model(&dir);
    let cases: [(&str, ConfigEdit, TensorEdit, &str); 3] = [
        (
            "no-norm",
            Box::new(|_| {}),
            Box::new(|t| {
                t.remove("model.norm.weight");
            }),
            "model.norm.weight",
        ),
        (
            "nan-norm",
            Box::new(|_| {}),
            Box::new(|t| t.get_mut("model.norm.weight").unwrap().1[3] = f32::NAN),
            "model.norm.weight",
        ),
        (
            "untied-no-head",
            Box::new(|c| c["tie_word_embeddings"] = false.into()),
            Box::new(|_| {}),
            "lm_head.weight",
        ),
    ];
    for (name, config, edit, tensor) in cases {
        let model = edited_model(&dir, name, config, edit);
        let out = dir.join(format!("{name}-q"));
        let args = quantize_args(&dir, &model, &out, &[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = gptq(&args);
        one_line_error(&run, tensor);
        assert!(
            !stderr(&run).contains("quantizing"),
            "{name}: refused before the layers: {}",
            stderr(&run)
        );
        assert!(!out.exists());
        let verify = gptq(&["inspect", "--verify", model.to_str().unwrap()]);
        one_line_error(&verify, tensor);
    }
}

/// A GPTQ checkpoint written as another tool would, with `edit` applied to its
/// quantization_config.
fn gptq_checkpoint(
    dir: &Path,
    name: &str,
    q: TinyGptq,
    edit: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let (tmp, _) = Tiny::default().write_gptq(9, q);
    let path = dir.join(name);
    std::fs::rename(tmp.path(), &path).unwrap();
    let config_path = path.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&config_path, config.to_string()).unwrap();
    path
}

#[test]
fn verify_cross_checks_the_quantization_config_with_the_tensors() {
    let dir = scratch("verify");
    let plain = TinyGptq::default();
    let ok = gptq_checkpoint(&dir, "ok", plain, |_| {});
    let run = gptq(&["inspect", "--verify", ok.to_str().unwrap()]);
    assert!(run.status.success(), "{}", stderr(&run));

    for (name, edit, expected) in [
        (
            "format-7",
            Box::new(|c: &mut serde_json::Value| {
                c["quantization_config"]["checkpoint_format"] = 7.into()
            }) as Box<dyn FnOnce(&mut serde_json::Value)>,
            "quantization_config.checkpoint_format",
        ),
        (
            "group-string",
            Box::new(|c: &mut serde_json::Value| {
                c["quantization_config"]["group_size"] = "16".into()
            }),
            "quantization_config.group_size",
        ),
        (
            "group-32",
            Box::new(|c: &mut serde_json::Value| {
                c["quantization_config"]["group_size"] = 32.into()
            }),
            "group_size 32",
        ),
    ] {
        let path = gptq_checkpoint(&dir, name, plain, edit);
        one_line_error(
            &gptq(&["inspect", "--verify", path.to_str().unwrap()]),
            expected,
        );
    }
    // Shuffled groups in a checkpoint that says desc_act false.
    let shuffled = TinyGptq {
        act_order: true,
        ..plain
    };
    let path = gptq_checkpoint(&dir, "shuffled", shuffled, |c| {
        c["quantization_config"]["desc_act"] = false.into()
    });
    one_line_error(
        &gptq(&["inspect", "--verify", path.to_str().unwrap()]),
        "desc_act",
    );
}

#[test]
fn an_older_autogptq_layout_is_read_from_quantize_config_json() {
    let dir = scratch("autogptq");
    let text = dir.join("text.txt");
    std::fs::write(&text, "one two three four five six seven eight nine ten").unwrap();
    let plain = TinyGptq::default();
    let mut moved = serde_json::Value::Null;
    let path = gptq_checkpoint(&dir, "old", plain, |c| {
        moved = c
            .as_object_mut()
            .unwrap()
            .remove("quantization_config")
            .unwrap();
    });
    std::fs::write(path.join("quantize_config.json"), moved.to_string()).unwrap();
    let run = gptq(&["inspect", "--verify", path.to_str().unwrap()]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stdout(&run).contains("GPTQ 4-bit, group size 16"),
        "{}",
        stdout(&run)
    );

    // Where both are present and disagree, config.json's is used, with a warning.
    let path = gptq_checkpoint(&dir, "both", plain, |_| {});
    let mut other = moved.clone();
    other["bits"] = 8.into();
    std::fs::write(path.join("quantize_config.json"), other.to_string()).unwrap();
    let run = gptq(&["inspect", path.to_str().unwrap()]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stderr(&run).contains("quantize_config.json disagrees with config.json"),
        "{}",
        stderr(&run)
    );
}

#[test]
fn flags_and_paths_that_cannot_work_are_refused_before_the_work() {
    let dir = scratch("flags");
    let out = dir.join("q");
    for (flags, expected) in [
        (&["--batch", "0"][..], "--batch must be at least 1"),
        (
            &["--max-shard-mib", "0"][..],
            "--max-shard-mib must be at least 1",
        ),
    ] {
        one_line_error(&quantize(&dir, &out, flags), expected);
    }
    let small = quantize(&dir, &out, &["--max-shard-size", "10KB"]);
    assert!(!small.status.success());
    assert!(
        stderr(&small).contains("outside 1MB to 1PiB"),
        "{}",
        stderr(&small)
    );
    let model = tiny_model(&dir);
    let mut args = quantize_args(&dir, &model, &out, &[]);
    let calib = args.iter().position(|a| a == "--calib").unwrap() + 1;
    args[calib] = dir.to_str().unwrap().to_string();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    one_line_error(&gptq(&args), "is a directory");
    // A report whose folder is a file cannot be written: found in the first second.
    std::fs::write(dir.join("plain"), "x").unwrap();
    let report = dir.join("plain").join("run.json");
    one_line_error(
        &quantize(&dir, &out, &["--report", report.to_str().unwrap()]),
        "--report",
    );
    assert!(!out.exists());

    // Servers pick the model class by `architectures`: one that disagrees is warned about.
    let odd = edited_model(
        &dir,
        "odd",
        |c| c["architectures"] = serde_json::json!(["Qwen2ForCausalLM"]),
        |_| {},
    );
    let args = quantize_args(&dir, &odd, &dir.join("odd-q"), &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = gptq(&args);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stderr(&run)
            .contains("architectures [\"Qwen2ForCausalLM\"] does not match model_type llama"),
        "{}",
        stderr(&run)
    );
}
