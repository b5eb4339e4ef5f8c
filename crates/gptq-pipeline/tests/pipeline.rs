//! The pipeline end to end on tiny random models: what it writes loads back, each linear was
//! solved against the right Hessian, writes are atomic, bad requests fail with a clear message.

use std::path::Path;

use gptq_core::testing::PlainProducts;
use gptq_core::{ActivationBatch, Backend, GroupSize, HessianAccumulator, QuantConfig};
use gptq_model::testing::{TempDir, Tiny, write_config, write_safetensors};
use gptq_model::{
    Checkpoint, Compute, LinearId, Par, attention_core, embed, forward_layer, rms_norm_par,
};
use gptq_pipeline::{
    CalibrationSource, Event, MemoryEstimate, PipelineError, PipelineOptions, QuantizedModel,
    Silent, SystemMemory, WriteOptions, check_free_space, checkpoint_bytes, clean_interrupted_runs,
    quantize_model, remove_saved_run, saved_run_bytes, saved_run_size, write_checkpoint,
};
use gptq_quant::{CheckpointFormat, unpack};
use gptq_solver::{CpuBackend, Gptq};
use ndarray::Array2;
use safetensors::Dtype;

/// The forward passes of a run with `options` in f32 on the CPU, as `gptq quantize` runs them.
fn cpu(options: &PipelineOptions) -> Compute<'static> {
    Compute::new(options.par())
}

/// `quantize_model` on one CPU thread, forward passes in f32, no progress.
fn quantize_on_cpu(
    checkpoint: &Checkpoint,
    samples: &[Vec<u32>],
    options: &PipelineOptions,
) -> gptq_pipeline::Result<QuantizedModel> {
    let backend = CpuBackend::with_threads(1);
    quantize_model(
        checkpoint,
        samples,
        &backend,
        cpu(options),
        options,
        &mut Silent,
    )
}

const TINY: Tiny = Tiny {
    model_type: "llama",
    hidden: 64,
    inter: 96,
    layers: 2,
    heads: 4,
    kv_heads: 2,
    vocab: 64,
    tied: true,
};

fn samples(count: usize, len: usize) -> Vec<Vec<u32>> {
    (0..count)
        .map(|s| {
            (0..len)
                .map(|t| ((s * 31 + t * 7 + t * t) % 64) as u32)
                .collect()
        })
        .collect()
}

fn options(bits: u8, group: usize, symmetric: bool) -> PipelineOptions {
    let config = QuantConfig::builder()
        .bits(bits)
        .group_size(GroupSize::Columns(group))
        .symmetric(symmetric)
        .build()
        .unwrap();
    let mut options = PipelineOptions::new(config);
    options.batch_sequences = 3;
    options.threads = 1;
    options
}

/// The calibration samples of [`run`] embedded, in its batches of three: (hidden, lens).
fn embedded_batches(checkpoint: &Checkpoint) -> Vec<(Array2<f32>, Vec<usize>)> {
    let table = checkpoint.load_embedding().unwrap();
    samples(7, 24)
        .chunks(3)
        .map(|g| (embed(table.view(), &g.concat()).unwrap(), vec![24; g.len()]))
        .collect()
}

/// The Hessian of `inputs`, one per batch of `batches`, as the pipeline accumulates it.
fn hessian_of<B: Backend>(
    gptq: &Gptq<&B>,
    inputs: &[Array2<f32>],
    batches: &[(Array2<f32>, Vec<usize>)],
) -> B::Hessian {
    let mut acc = gptq.accumulator(inputs[0].ncols()).unwrap();
    for (x, (_, lens)) in inputs.iter().zip(batches) {
        acc.add_batch(&ActivationBatch::new(x.view()).sequences(lens.len()))
            .unwrap();
    }
    acc.finish().unwrap()
}

/// The codes the pipeline chose for linear `id` of decoder layer `layer`.
fn codes_of(model: &QuantizedModel, layer: usize, id: LinearId) -> Array2<u8> {
    let linear = model
        .linears
        .iter()
        .find(|l| l.layer == layer && l.id == id)
        .unwrap();
    unpack(&linear.packed).unwrap().codes().to_owned()
}

fn run(dir: &Path, options: &PipelineOptions) -> (Checkpoint, QuantizedModel) {
    let checkpoint = Checkpoint::open(dir).unwrap();
    let model = quantize_model(
        &checkpoint,
        &samples(7, 24),
        &CpuBackend::with_threads(1),
        cpu(options),
        options,
        &mut Silent,
    )
    .unwrap();
    (checkpoint, model)
}

#[test]
fn the_written_checkpoint_reloads_with_the_quantized_weights() {
    let source = TINY.write(1);
    let options = options(4, 32, true);
    let (checkpoint, model) = run(source.path(), &options);
    assert_eq!(model.linears.len(), 14);
    assert_eq!(model.format, CheckpointFormat::Gptq);
    let out = TempDir::new("out");
    let target = out.path().join("quantized");
    let files = write_checkpoint(
        &checkpoint,
        &model,
        &options,
        &target,
        &WriteOptions::default(),
    )
    .unwrap();
    assert!(files.iter().all(|f| f.is_file()), "{files:?}");

    let reloaded = Checkpoint::open(&target).unwrap();
    let q = reloaded
        .config()
        .quantization
        .clone()
        .expect("quantization_config written");
    assert_eq!(
        (q.bits, q.group_size, q.sym, q.format),
        (4, 32, true, CheckpointFormat::Gptq)
    );
    for linear in &model.linears {
        let layer = reloaded.load_layer(linear.layer).unwrap();
        let expected = unpack(&linear.packed).unwrap().dequantize();
        assert_eq!(
            layer.linear(linear.id).weight,
            expected,
            "{}",
            linear.prefix()
        );
    }
    // Tensors that are not quantized linears are copied unchanged.
    let (a, b) = (checkpoint.weights(), reloaded.weights());
    for name in [
        "model.embed_tokens.weight",
        "model.layers.1.input_layernorm.weight",
    ] {
        assert_eq!(a.raw(name).unwrap().data, b.raw(name).unwrap().data);
    }
    let nll = reloaded
        .load_model()
        .unwrap()
        .nll(&samples(1, 24)[0], &[24], Par::Seq)
        .unwrap();
    assert!(nll[0].sum.is_finite());
}

#[test]
fn each_group_is_solved_against_the_inputs_the_quantized_layer_produces() {
    let source = TINY.write(2);
    let options = options(4, 32, false);
    let (checkpoint, model) = run(source.path(), &options);
    // Recompute layer 0 by hand: q/k/v from the normed embeddings, o from the attention of the
    // already quantized q/k/v.
    let layer0 = checkpoint.load_layer(0).unwrap();
    let batches = embedded_batches(&checkpoint);
    let backend = CpuBackend::with_threads(1);
    let gptq = Gptq::new(&backend, options.config.clone()).with_options(options.solve);
    let hessian = |inputs: &[Array2<f32>]| hessian_of(&gptq, inputs, &batches);
    let eps = layer0.shape.rms_norm_eps;
    let normed: Vec<_> = batches
        .iter()
        .map(|(x, _)| rms_norm_par(x.view(), layer0.input_layernorm.view(), eps, Par::Seq).unwrap())
        .collect();
    let h_qkv = hessian(&normed);
    let grid = options.grid();
    let mut quantized = layer0.clone();
    for id in [LinearId::Q, LinearId::K, LinearId::V] {
        let ours = gptq
            .quantize_with_grid(layer0.linear(id).weight.view(), &h_qkv, &grid)
            .unwrap();
        assert_eq!(codes_of(&model, 0, id), ours.tensor.codes(), "{id}");
        quantized
            .linear_mut(id)
            .set_weight(ours.tensor.dequantize())
            .unwrap();
    }
    let attention: Vec<_> = normed
        .iter()
        .zip(&batches)
        .map(|(x, (_, lens))| attention_core(&quantized, x.view(), lens, Par::Seq).unwrap())
        .collect();
    let ours = gptq
        .quantize_with_grid(layer0.o_proj.weight.view(), &hessian(&attention), &grid)
        .unwrap();
    assert_eq!(codes_of(&model, 0, LinearId::O), ours.tensor.codes());
    assert_eq!(gptq.backend().name(), "cpu");
}

#[test]
fn the_next_layer_is_calibrated_on_the_quantized_layers_output() {
    for true_sequential in [true, false] {
        let source = TINY.write(6);
        let mut options = options(4, 32, true);
        options.true_sequential = true_sequential;
        let (checkpoint, model) = run(source.path(), &options);
        // Layer 0 with the weights the pipeline chose for it.
        let mut layer0 = checkpoint.load_layer(0).unwrap();
        for linear in model.linears.iter().filter(|l| l.layer == 0) {
            let weight = unpack(&linear.packed).unwrap().dequantize();
            layer0.linear_mut(linear.id).set_weight(weight).unwrap();
        }
        let batches = embedded_batches(&checkpoint);
        let layer1 = checkpoint.load_layer(1).unwrap();
        let normed: Vec<_> = batches
            .iter()
            .map(|(x, lens)| {
                let h = forward_layer(&layer0, x.view(), lens, Par::Seq).unwrap();
                let (norm, eps) = (&layer1.input_layernorm, layer1.shape.rms_norm_eps);
                rms_norm_par(h.view(), norm.view(), eps, Par::Seq).unwrap()
            })
            .collect();
        let backend = CpuBackend::with_threads(1);
        let gptq = Gptq::new(&backend, options.config.clone()).with_options(options.solve);
        let h_qkv = hessian_of(&gptq, &normed, &batches);
        for id in [LinearId::Q, LinearId::K, LinearId::V] {
            let ours = gptq
                .quantize_with_grid(layer1.linear(id).weight.view(), &h_qkv, &options.grid())
                .unwrap();
            assert_eq!(
                codes_of(&model, 1, id),
                ours.tensor.codes(),
                "{id}, true_sequential = {true_sequential}"
            );
        }
    }
}

#[test]
fn not_true_sequential_is_a_different_schedule() {
    let source = TINY.write(3);
    let sequential = options(4, 32, true);
    let mut parallel = sequential.clone();
    parallel.true_sequential = false;
    let (_, a) = run(source.path(), &sequential);
    let (_, b) = run(source.path(), &parallel);
    // q/k/v of layer 0 see the same inputs either way; o of layer 0 does not.
    assert_eq!(a.linears[0].packed, b.linears[0].packed);
    assert_ne!(a.linears[3].packed, b.linears[3].packed);
}

#[test]
fn v1_asymmetric_checkpoints_keep_zero_points_storable() {
    let source = TINY.write(4);
    let mut options = options(3, 32, false);
    assert_eq!(options.checkpoint_format(), CheckpointFormat::GptqV2);
    options.format = Some(CheckpointFormat::Gptq);
    let (_, model) = run(source.path(), &options);
    assert!(
        model.warnings.iter().any(|w| w.contains("gptq_v2")),
        "{:?}",
        model.warnings
    );
    for linear in &model.linears {
        let tensor = unpack(&linear.packed).unwrap();
        assert!(
            tensor.zeros().iter().all(|&z| z >= 1),
            "{}",
            linear.prefix()
        );
    }
}

#[test]
fn large_checkpoints_are_sharded_with_an_index() {
    let source = TINY.write(5);
    let options = options(4, 32, true);
    let (checkpoint, model) = run(source.path(), &options);
    let out = TempDir::new("sharded");
    let single = out.path().join("single");
    let sharded = out.path().join("sharded");
    write_checkpoint(
        &checkpoint,
        &model,
        &options,
        &single,
        &WriteOptions::default(),
    )
    .unwrap();
    let small = WriteOptions {
        max_shard_bytes: 20_000,
        overwrite: false,
    };
    write_checkpoint(&checkpoint, &model, &options, &sharded, &small).unwrap();
    assert!(sharded.join("model.safetensors.index.json").is_file());
    let shards = std::fs::read_dir(&sharded)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".safetensors")
        })
        .count();
    assert!(shards > 1, "{shards} shard(s)");
    let (a, b) = (
        Checkpoint::open(&single).unwrap(),
        Checkpoint::open(&sharded).unwrap(),
    );
    for i in 0..2 {
        assert_eq!(a.load_layer(i).unwrap(), b.load_layer(i).unwrap());
    }
}

/// Total bytes and count of the files in `dir`.
fn dir_bytes(dir: &Path) -> (u64, usize) {
    let files: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect();
    (files.iter().sum(), files.len())
}

#[test]
fn the_checkpoint_size_is_bounded_before_the_run() {
    let source = TINY.write(8);
    let out = TempDir::new("size");
    for (k, options) in [
        options(4, 32, true),
        options(3, 32, false),
        options(2, 64, true),
    ]
    .into_iter()
    .enumerate()
    {
        let predicted =
            checkpoint_bytes(&Checkpoint::open(source.path()).unwrap(), &options).unwrap();
        let (checkpoint, model) = run(source.path(), &options);
        for max_shard_bytes in [u64::MAX, 20_000] {
            let dir = out.path().join(format!("{k}-{max_shard_bytes}"));
            let write = WriteOptions {
                max_shard_bytes,
                overwrite: false,
            };
            write_checkpoint(&checkpoint, &model, &options, &dir, &write).unwrap();
            let (actual, files) = dir_bytes(&dir);
            // Data, configs and copied files are counted exactly; only the headers and the
            // shard index (2 layers of 7 linears × 4 tensors + 7 other tensors) are allowed
            // for, generously: under 200 bytes a tensor beyond the twice-counted names.
            let header_allowance = (2 * 7 * 4 + 7) * 200;
            assert!(
                actual <= predicted && predicted <= actual + header_allowance,
                "config {k}, {files} files: predicted {predicted} bytes, wrote {actual}"
            );
        }
    }
}

#[test]
fn a_filesystem_without_room_is_refused() {
    let out = TempDir::new("space");
    let target = out.path().join("model-gptq");
    check_free_space(&target, 1).unwrap();
    let err = check_free_space(&target, u64::MAX).unwrap_err();
    assert!(matches!(err, PipelineError::NoSpace { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("MiB free") && message.contains("choose another --out"),
        "{message}"
    );
    assert!(!target.exists());
}

#[test]
fn the_memory_need_is_predicted_and_checked_before_the_run() {
    let source = TINY.write(10);
    let config = Checkpoint::open(source.path()).unwrap().config().clone();
    let options = options(4, 32, true);
    let (hidden, inter) = (TINY.hidden as u64, TINY.inter as u64);
    let small = MemoryEstimate::new(&config, &[24; 6], &options).unwrap();
    let large = MemoryEstimate::new(&config, &[24; 12], &options).unwrap();
    // Six more sequences of 24 tokens: their residual stream and MLP activations, in f32; the
    // batch temporaries (3 sequences a batch) stay the same.
    assert_eq!(
        large.activations - small.activations,
        4 * 6 * 24 * (hidden + inter)
    );
    assert_eq!(
        (large.weights, large.solver, large.packed),
        (small.weights, small.solver, small.packed)
    );
    assert!(large.peak > small.peak);
    let mut two_pass = options.clone();
    two_pass.true_sequential = false;
    let two_pass = MemoryEstimate::new(&config, &[24; 6], &two_pass).unwrap();
    assert_eq!(
        two_pass.activations - small.activations,
        3 * 4 * 6 * 24 * hidden
    );

    let ample = SystemMemory {
        total: large.peak * 4,
        available: large.peak * 2,
    };
    assert_eq!(ample.check(&large, 288).unwrap(), None);
    let busy = SystemMemory {
        total: large.peak * 4,
        available: large.peak / 2,
    };
    let warning = busy.check(&large, 288).unwrap().unwrap();
    assert!(
        warning.contains("288 calibration tokens") && warning.contains("may be"),
        "{warning}"
    );
    let too_small = SystemMemory {
        total: large.peak - 1,
        available: large.peak - 1,
    };
    let message = too_small.check(&large, 288).unwrap_err().to_string();
    assert!(
        message.contains("lower --nsamples or --seqlen") && message.contains("--no-memory-check"),
        "{message}"
    );
}

/// The config.json of a checkpoint that a GPTQ tool wrote.
const GPTQ_CONFIG: &str = r#"{"quantization_config": {"quant_method": "gptq", "bits": 4}}"#;

#[test]
fn writing_is_atomic_and_never_clobbers_by_accident() {
    let source = TINY.write(6);
    let options = options(4, 32, true);
    let (checkpoint, model) = run(source.path(), &options);
    let out = TempDir::new("atomic");
    let target = out.path().join("model");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep.txt"), "mine").unwrap();
    // A checkpoint of a GPTQ tool's, which --overwrite may replace (anything else it refuses).
    std::fs::write(target.join("config.json"), GPTQ_CONFIG).unwrap();
    let err = write_checkpoint(
        &checkpoint,
        &model,
        &options,
        &target,
        &WriteOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("--overwrite"), "{err}");
    assert!(target.join("keep.txt").is_file());

    let into_source = write_checkpoint(
        &checkpoint,
        &model,
        &options,
        &source.path().join("q"),
        &WriteOptions::default(),
    );
    assert!(
        into_source
            .unwrap_err()
            .to_string()
            .contains("source model")
    );

    let replace = WriteOptions {
        overwrite: true,
        ..WriteOptions::default()
    };
    write_checkpoint(&checkpoint, &model, &options, &target, &replace).unwrap();
    assert!(!target.join("keep.txt").exists());
    let leftovers: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers,
        vec![std::ffi::OsString::from("model")],
        "staging directories left behind"
    );

    // A parent that is a file: the error comes before anything is written.
    let blocker = out.path().join("file");
    std::fs::write(&blocker, "x").unwrap();
    assert!(
        write_checkpoint(
            &checkpoint,
            &model,
            &options,
            &blocker.join("model"),
            &WriteOptions::default()
        )
        .is_err()
    );
}

/// The id of a process that has exited.
#[cfg(unix)]
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    child.id()
}

#[test]
#[cfg(unix)]
fn what_interrupted_runs_left_is_cleared() {
    let source = TINY.write(6);
    let options = options(4, 32, true);
    let (checkpoint, model) = run(source.path(), &options);
    let out = TempDir::new("interrupted");
    let target = out.path().join("model");
    let dead = dead_pid();
    // A run killed while writing, one killed between the renames of an --overwrite, and a run
    // still going (pid 1 always exists).
    let partial = out.path().join(format!(".model.partial-{dead}"));
    let moved = out.path().join(format!(".model.old-{dead}"));
    let running = out.path().join(".model.partial-1");
    for dir in [&partial, &moved, &running] {
        std::fs::create_dir(dir).unwrap();
    }
    std::fs::write(moved.join("previous.txt"), "the user's checkpoint").unwrap();
    std::fs::write(moved.join("config.json"), GPTQ_CONFIG).unwrap();
    let said = clean_interrupted_runs(&target);
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(!partial.exists() && !moved.exists() && running.is_dir());
    assert_eq!(
        std::fs::read_to_string(target.join("previous.txt")).unwrap(),
        "the user's checkpoint"
    );
    assert!(said.iter().any(|l| l.starts_with("restored")), "{said:?}");

    // Once the checkpoint is back, a stale copy of a replaced one is only garbage; writing
    // clears it by itself.
    let stale = out.path().join(format!(".model.old-{dead}"));
    std::fs::create_dir(&stale).unwrap();
    let replace = WriteOptions {
        overwrite: true,
        ..WriteOptions::default()
    };
    // Not while another live run writes the same output.
    let err = write_checkpoint(&checkpoint, &model, &options, &target, &replace).unwrap_err();
    assert!(err.to_string().contains("another run (process 1)"), "{err}");
    assert!(running.is_dir());
    std::fs::remove_dir(&running).unwrap();
    write_checkpoint(&checkpoint, &model, &options, &target, &replace).unwrap();
    assert!(!stale.exists());
    assert!(target.join("model.safetensors").is_file());
    assert!(clean_interrupted_runs(&target).is_empty());
}

#[test]
fn bad_requests_fail_with_a_message_that_names_the_fix() {
    // 3 bits need layer dimensions that are multiples of 32; this model's MLP is 48 wide.
    let narrow = Tiny {
        hidden: 32,
        inter: 48,
        ..TINY
    }
    .write(7);
    let checkpoint = Checkpoint::open(narrow.path()).unwrap();
    let backend = CpuBackend::with_threads(1);
    let err = quantize_model(
        &checkpoint,
        &samples(2, 8),
        &backend,
        cpu(&options(3, 16, true)),
        &options(3, 16, true),
        &mut Silent,
    )
    .unwrap_err();
    assert!(err.to_string().contains("multiples of 32"), "{err}");
    let err = quantize_model(
        &checkpoint,
        &samples(2, 8),
        &backend,
        cpu(&options(4, 64, true)),
        &options(4, 64, true),
        &mut Silent,
    )
    .unwrap_err();
    assert!(err.to_string().contains("per-channel"), "{err}");
    let err = quantize_on_cpu(&checkpoint, &[], &options(4, 16, true)).unwrap_err();
    assert!(err.to_string().contains("calibration"), "{err}");

    // An already quantized checkpoint.
    let source = TINY.write(8);
    let options = options(4, 32, true);
    let (checkpoint, model) = run(source.path(), &options);
    let out = TempDir::new("twice");
    let target = out.path().join("q");
    write_checkpoint(
        &checkpoint,
        &model,
        &options,
        &target,
        &WriteOptions::default(),
    )
    .unwrap();
    let quantized = Checkpoint::open(&target).unwrap();
    let err = quantize_model(
        &quantized,
        &samples(2, 8),
        &backend,
        cpu(&options),
        &options,
        &mut Silent,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("already a GPTQ checkpoint"),
        "{err}"
    );
}

#[test]
fn calibration_sources_are_checked() {
    let source = TINY.write(9);
    let checkpoint = Checkpoint::open(source.path()).unwrap();
    let dir = TempDir::new("calib");
    let ids = dir.path().join("ids.json");
    std::fs::write(&ids, r#"{"windows": [[1, 2, 3, 4, 5], [6, 7, 8]]}"#).unwrap();
    let loaded = CalibrationSource::detect(&ids, 0)
        .load(&checkpoint, 5, 4)
        .unwrap();
    assert_eq!(loaded, vec![vec![1, 2, 3, 4], vec![6, 7, 8]]);
    std::fs::write(&ids, r#"{"windows": [[1, 2, 300]]}"#).unwrap();
    let err = CalibrationSource::detect(&ids, 0)
        .load(&checkpoint, 5, 4)
        .unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
    let missing = CalibrationSource::detect(dir.path().join("none.txt"), 0)
        .load(&checkpoint, 5, 4)
        .unwrap_err();
    assert!(missing.to_string().contains("not found"), "{missing}");
    // Text needs the model's tokenizer, which this tiny model lacks.
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "some text").unwrap();
    let err = CalibrationSource::detect(&text, 0)
        .load(&checkpoint, 5, 4)
        .unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn an_activation_that_overflows_is_named_by_layer_sample_and_token() {
    // With rms_norm_eps 0, an all-zero embedding row normalizes to 0/0: NaN enters layer 0's
    // q/k/v input wherever that token is.
    let dir = TempDir::new("overflow");
    let mut config = TINY.config();
    config["rms_norm_eps"] = 0.0.into();
    write_config(dir.path(), &config);
    let mut tensors = TINY.tensors(3);
    let (_, table) = tensors.get_mut("model.embed_tokens.weight").unwrap();
    let zero_token = TINY.vocab - 1;
    table[zero_token * TINY.hidden..][..TINY.hidden].fill(0.0);
    write_safetensors(&dir.path().join("model.safetensors"), &tensors, Dtype::F32);
    let source = Checkpoint::open(dir.path()).unwrap();
    let mut windows = samples(6, 32);
    for w in &mut windows {
        w.iter_mut().for_each(|t| *t %= zero_token as u32);
    }
    windows[4][7] = zero_token as u32;
    let mut options = options(4, 32, true);
    options.batch_sequences = 4; // the sample is found across batches
    let err = quantize_on_cpu(&source, &windows, &options).unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("layer 0: the input of self_attn.q_proj")
            && message.contains("NaN at calibration sample 4, token 7"),
        "{message}"
    );
}

/// Runs `quantize_model` and stops it, like a kill, when layer `stop_at` (counting from 0)
/// begins; `None` runs to the end. Returns the result and the warnings.
fn run_until(
    source: &Checkpoint,
    windows: &[Vec<u32>],
    options: &PipelineOptions,
    stop_at: Option<usize>,
) -> (Option<QuantizedModel>, Vec<String>) {
    let layers = source.config().num_hidden_layers;
    let mut warnings = Vec::new();
    let stop = stop_at.map(|l| format!("layer {}/{layers}", l + 1));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut progress = |event: Event| match event {
            Event::Message(m) if Some(&m) == stop.as_ref() => {
                panic!("a simulated kill, expected by this test")
            }
            Event::Warning(w) => warnings.push(w),
            _ => {}
        };
        let backend = CpuBackend::with_threads(1);
        quantize_model(
            source,
            windows,
            &backend,
            cpu(options),
            options,
            &mut progress,
        )
        .unwrap()
    }));
    (result.ok(), warnings)
}

#[test]
fn an_interrupted_run_resumes_with_the_same_result() {
    let tiny = Tiny { layers: 3, ..TINY };
    let dir = tiny.write(8);
    let source = Checkpoint::open(dir.path()).unwrap();
    let windows = samples(6, 32);
    let state = TempDir::new("resume");
    let mut options = options(4, 32, false);
    options.batch_sequences = 4; // two batches saved and read back
    let (uninterrupted, _) = run_until(&source, &windows, &options, None);
    let uninterrupted = uninterrupted.unwrap();

    options.resume_dir = Some(state.path().join("state"));
    let (killed, _) = run_until(&source, &windows, &options, Some(2));
    assert!(killed.is_none());
    // The disk bound holds, and is not far above what two of three layers took.
    let lens: Vec<usize> = windows.iter().map(Vec::len).collect();
    let bound = saved_run_bytes(&source, &lens, &options).unwrap();
    let used = saved_run_size(&state.path().join("state"));
    assert_eq!(used, dir_bytes(&state.path().join("state")).0);
    assert!(
        used > 0 && used <= bound && bound <= 3 * used,
        "{used} {bound}"
    );
    let (resumed, warnings) = run_until(&source, &windows, &options, None);
    let resumed = resumed.unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("resuming after layer 2 of 3")),
        "{warnings:?}"
    );
    assert_eq!(resumed.linears.len(), uninterrupted.linears.len());
    for (a, b) in resumed.linears.iter().zip(&uninterrupted.linears) {
        assert_eq!((a.layer, a.id), (b.layer, b.id));
        assert_eq!(a.packed, b.packed, "{}", a.prefix());
    }
    let losses = |m: &QuantizedModel| m.modules.iter().map(|r| r.loss).collect::<Vec<_>>();
    assert_eq!(losses(&resumed), losses(&uninterrupted));
    // The times say which part the interrupted run did: its two layers' times are included.
    let before = resumed.resumed.expect("this run resumed another");
    assert_eq!(before.layers, 2);
    assert!(before.times.total() > 0.0 && before.times.total() <= resumed.times.total());
    assert!(uninterrupted.resumed.is_none());

    // Killed after its last layer was saved: the state is complete and nothing is redone.
    let (again, warnings) = run_until(&source, &windows, &options, None);
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("resuming after layer 3 of 3"))
    );
    assert_eq!(again.unwrap().linears.len(), uninterrupted.linears.len());

    // Other settings do not pick up this state: it is removed and the run starts over. Only
    // the saved files go, whatever else the directory holds.
    let saved = state.path().join("state");
    std::fs::write(saved.join("notes.txt"), "mine").unwrap();
    let mut other = options.clone();
    other.config = QuantConfig::builder()
        .bits(8)
        .group_size(GroupSize::Columns(32))
        .build()
        .unwrap();
    let (fresh, warnings) = run_until(&source, &windows, &other, None);
    assert!(
        warnings.iter().any(|w| w.contains("another run")),
        "{warnings:?}"
    );
    assert_eq!(fresh.unwrap().linears[0].packed.bits, 8);
    assert!(saved.join("notes.txt").is_file());
    // Nor does other calibration data (here one sample fewer), with the same settings.
    let (_, warnings) = run_until(&source, &windows[1..], &other, None);
    assert!(
        warnings.iter().any(|w| w.contains("another run")),
        "{warnings:?}"
    );

    // A state that parses but lacks a linear is refused too: a checkpoint with a layer left in
    // full precision would be written otherwise.
    let state_json = state.path().join("state").join("state.json");
    let mut parsed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_json).unwrap()).unwrap();
    parsed["modules"].as_array_mut().unwrap().pop();
    std::fs::write(&state_json, parsed.to_string()).unwrap();
    let err = quantize_on_cpu(&source, &windows[1..], &other).unwrap_err();
    assert!(err.to_string().contains("is incomplete"), "{err}");

    // A damaged state is refused with the way out.
    std::fs::write(state.path().join("state").join("state.json"), "{").unwrap();
    let err = quantize_on_cpu(&source, &windows, &options).unwrap_err();
    assert!(err.to_string().contains("delete that directory"), "{err}");

    remove_saved_run(&saved).unwrap();
    let left: Vec<_> = std::fs::read_dir(&saved)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["notes.txt"]);
    std::fs::remove_file(saved.join("notes.txt")).unwrap();
    remove_saved_run(&saved).unwrap();
    assert!(!saved.exists());
    remove_saved_run(&saved).unwrap(); // nothing there: not an error
}

#[test]
fn damping_raised_past_the_request_is_reported() {
    let source = TINY.write(9);
    let checkpoint = Checkpoint::open(source.path()).unwrap();
    // Eight tokens give Hessians of rank at most 8 for 64- and 96-column inputs: singular.
    let few = samples(1, 8);
    let with_damping = |damp: f64| {
        let mut options = options(4, 32, true);
        options.config = QuantConfig::builder()
            .group_size(GroupSize::Columns(32))
            .damp_percent(damp)
            .build()
            .unwrap();
        quantize_on_cpu(&checkpoint, &few, &options).unwrap()
    };
    let undamped = with_damping(0.0);
    let raised = undamped
        .modules
        .iter()
        .filter(|m| m.damp_percent > 0.0)
        .count();
    assert_eq!(raised, undamped.modules.len());
    let warning = undamped
        .warnings
        .iter()
        .find(|w| w.contains("damping was raised"))
        .expect("a warning about the raised damping");
    assert!(
        warning.contains(&format!("{raised} of {raised} linears")),
        "{warning}"
    );
    let damped = with_damping(0.01);
    assert!(damped.modules.iter().all(|m| m.damp_percent == 0.01));
    assert!(
        !damped.warnings.iter().any(|w| w.contains("damping")),
        "{:?}",
        damped.warnings
    );
}

#[test]
fn a_config_that_does_not_match_the_weights_fails_before_any_work() {
    let source = TINY.write(10);
    let options = options(4, 32, true);
    let with_layers = |layers: usize| {
        let mut config = TINY.config();
        config["num_hidden_layers"] = layers.into();
        gptq_model::testing::write_config(source.path(), &config);
        let checkpoint = Checkpoint::open(source.path()).unwrap();
        gptq_pipeline::check_model(&checkpoint, &options)
            .unwrap_err()
            .to_string()
    };
    // Three layers named, two in the weights: the missing one is found from the headers.
    let err = with_layers(3);
    assert!(
        err.contains("model.layers.2.input_layernorm.weight") && err.contains("missing"),
        "{err}"
    );
    assert!(with_layers(0).contains("nothing to quantize"));

    // The header check expects exactly the tensors the loader reads: Qwen2's q/k/v biases
    // and Qwen3's head norms too.
    for model_type in ["mistral", "qwen2", "qwen3", "smollm3"] {
        let source = Tiny { model_type, ..TINY }.write(11);
        let (_, model) = run(source.path(), &options);
        assert_eq!(model.linears.len(), 2 * 7, "{model_type}");
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    // Wide enough that the products and the Hessian sums are split between threads.
    let tiny = Tiny {
        hidden: 256,
        inter: 512,
        ..TINY
    };
    let source = tiny.write(5);
    let checkpoint = Checkpoint::open(source.path()).unwrap();
    let quantize = |threads: usize| {
        let mut options = options(3, 64, false);
        options.threads = threads;
        let backend = CpuBackend::with_threads(threads);
        quantize_model(
            &checkpoint,
            &samples(12, 96),
            &backend,
            cpu(&options),
            &options,
            &mut Silent,
        )
        .unwrap()
    };
    let (one, three) = (quantize(1), quantize(3));
    assert_eq!(one.linears.len(), 14);
    for (a, b) in one.linears.iter().zip(&three.linears) {
        assert_eq!(a.packed, b.packed, "{}", a.prefix());
    }
    let losses = |m: &QuantizedModel| m.modules.iter().map(|r| r.loss).collect::<Vec<_>>();
    assert!(losses(&one).iter().all(Option::is_some));
    assert_eq!(losses(&one), losses(&three));
}

#[test]
fn a_backend_with_its_own_products_runs_the_forward_passes() {
    let source = TINY.write(9);
    let checkpoint = Checkpoint::open(source.path()).unwrap();
    let on_cpu = run(source.path(), &options(4, 32, false)).1;
    for (true_sequential, products_per_run) in
        [(true, 7 * 3 + 6 * 3), (false, 6 * 3 + 7 * 3 + 6 * 3)]
    {
        let mut options = options(4, 32, false);
        options.true_sequential = true_sequential;
        let products = PlainProducts::new();
        let model = quantize_model(
            &checkpoint,
            &samples(7, 24),
            &CpuBackend::with_threads(1),
            cpu(&options).with_products(&products),
            &options,
            &mut Silent,
        )
        .unwrap();
        // Every product of layer 0, and layer 1's but its unread `down` (three batches each);
        // without true-sequential, layer 0 runs a hooked pass and an output pass.
        assert_eq!(products.calls(), products_per_run);
        if !true_sequential {
            continue;
        }
        // The same run as on the CPU, up to the products' rounding (f64 sums here).
        let (mut same, mut all) = (0, 0);
        for (a, b) in model.linears.iter().zip(&on_cpu.linears) {
            let (a, b) = (unpack(&a.packed).unwrap(), unpack(&b.packed).unwrap());
            same += a
                .codes()
                .iter()
                .zip(b.codes())
                .filter(|(x, y)| x == y)
                .count();
            all += a.codes().len();
        }
        assert!(
            same as f64 >= 0.995 * all as f64,
            "{same} of {all} codes equal"
        );
        for (a, b) in model.modules.iter().zip(&on_cpu.modules) {
            let (a, b) = (a.loss.unwrap(), b.loss.unwrap());
            assert!((a - b).abs() <= 1e-3 * b.abs(), "loss {a} against {b}");
        }
    }

    // A product that fails stops the run with that failure named.
    let failing = PlainProducts::failing_at(9);
    let err = quantize_model(
        &checkpoint,
        &samples(7, 24),
        &CpuBackend::with_threads(1),
        cpu(&options(4, 32, false)).with_products(&failing),
        &options(4, 32, false),
        &mut Silent,
    )
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("matrix product of the forward pass failed")
            && message.contains("product 9 failed"),
        "{message}"
    );
}

#[test]
fn quantized_linears_multiply_their_codes_in_true_sequential_runs() {
    let source = TINY.write(9);
    let checkpoint = Checkpoint::open(source.path()).unwrap();
    let run_with = |products: PlainProducts| {
        let model = quantize_model(
            &checkpoint,
            &samples(7, 24),
            &CpuBackend::with_threads(1),
            cpu(&options(4, 32, false)).with_products(&products),
            &options(4, 32, false),
            &mut Silent,
        )
        .unwrap();
        (model, products)
    };
    let (expected, _) = run_with(PlainProducts::new());
    let (model, products) = run_with(PlainProducts::new().with_quantized());
    // True-sequential: every product of the run comes after its linear was quantized (layer
    // 0's seven and layer 1's six, three batches each), and the plain products compute the same
    // numbers from the codes.
    assert_eq!(products.calls(), 7 * 3 + 6 * 3);
    assert_eq!(products.quantized_calls(), products.calls());
    for (a, b) in model.linears.iter().zip(&expected.linears) {
        assert_eq!(a.packed, b.packed, "{}", a.prefix());
    }
}
