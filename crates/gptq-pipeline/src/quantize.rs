//! Sequential, layer-by-layer quantization of a decoder model.
//!
//! The inputs of decoder layer 0 are captured once (the embedding of the calibration tokens).
//! Then, for each layer in turn, the layer's stages run on the current inputs (see
//! `gptq_model::forward`): the input of q/k/v is computed, their shared Hessian accumulated
//! and the three quantized; the attention output is then computed *with the quantized q/k/v*,
//! and so on for o, gate/up and down ("true-sequential"). The layer's output, computed with its
//! quantized weights, becomes the next layer's input. Each linear is computed once, and only
//! one layer's activations are held at a time. The forward passes run on the caller's
//! [`Compute`] (bf16 or int8 kernels, a GPU's products), beside the solver's backend.

use std::time::Instant;

use gptq_core::{ActivationBatch, Backend, GptqError, GroupSize, HessianAccumulator};
use gptq_model::{
    Checkpoint, Compute, DecoderLayer, LayerStage, LinearId, embed, finish_layer, forward_layer,
};
use gptq_quant::{CheckpointFormat, check_packable, pack};
use gptq_solver::{Gptq, QuantizedLayer};
use ndarray::Array2;
use rayon::prelude::*;

use crate::error::{PipelineError, Result};
use crate::options::PipelineOptions;
use crate::progress::{Event, Progress};
use crate::quantized::{Batch, QuantizedLinear, QuantizedModel, Resumed};
use crate::report::{ModuleReport, StageTimes};
use crate::resume::{Found, ResumeDir, Saved};

/// Checks, before any work, that every linear can be quantized and packed as asked, and that the
/// weights hold every layer that config.json names, with its shapes (headers only), and the
/// embedding, final norm and output projection with their shapes and finite values.
pub fn check_model(checkpoint: &Checkpoint, options: &PipelineOptions) -> Result<Vec<String>> {
    let config = checkpoint.config();
    if config.quantization.is_some() {
        return Err(PipelineError::Invalid(format!(
            "{} is already a GPTQ checkpoint: quantize the original full-precision model",
            checkpoint.dir().display()
        )));
    }
    if config.num_hidden_layers == 0 {
        return Err(PipelineError::Invalid(format!(
            "{} has no decoder layers (num_hidden_layers 0): there is nothing to quantize",
            checkpoint.dir().display()
        )));
    }
    checkpoint.check_layer_tensors()?;
    checkpoint.check_outer_tensors()?;
    let shape = config.layer_shape(0); // every layer has the same dimensions
    let bits = options.config.bits();
    let mut warnings = Vec::new();
    for id in LinearId::ALL {
        let (rows, columns) = id.dims(&shape);
        options
            .config
            .check_columns(columns)
            .map_err(PipelineError::quantization(format!("{id}")))?;
        check_packable(bits, rows, columns).map_err(PipelineError::quantization(format!(
            "{id} ({rows}×{columns})"
        )))?;
        if let GroupSize::Columns(g) = options.config.group_size()
            && columns % g != 0
        {
            warnings.push(format!(
                "group size {g} does not divide the {columns} input columns of {id}: such \
                 checkpoints do not load in vLLM or GPTQModel's CPU kernels"
            ));
        }
    }
    if options.raises_zero_points() {
        warnings.push(
            "checkpoint_format gptq (v1) stores zero - 1, so asymmetric zero points are kept at \
             1 or more (the grid widens its step where needed); write gptq_v2 to avoid it"
                .into(),
        );
    }
    warnings.dedup();
    Ok(warnings)
}

/// What a run on `backend` with the forward passes on `compute` is called in reports and in its
/// resume fingerprint: the backend's name, with the products' precision when they round (e.g.
/// `cpu-bf16`), since that changes the results.
///
/// ```
/// use gptq_model::{Compute, Par, ProductPrecision};
/// use gptq_pipeline::run_name;
/// use gptq_solver::CpuBackend;
///
/// let backend = CpuBackend::with_threads(1);
/// assert_eq!(run_name(&backend, &Compute::new(Par::Seq)), "cpu");
/// let int8 = Compute::cpu(ProductPrecision::Int8, Par::Seq);
/// assert_eq!(run_name(&backend, &int8), "cpu-int8");
/// ```
pub fn run_name<B: Backend>(backend: &B, compute: &Compute<'_>) -> String {
    match compute.precision() {
        "f32" => backend.name().to_string(),
        rounded => format!("{}-{rounded}", backend.name()),
    }
}

/// Quantizes every linear of every decoder layer of `checkpoint` on `backend`, calibrated on
/// `samples` (token ids), the calibration forward passes running on `compute`.
pub fn quantize_model<B: Backend>(
    checkpoint: &Checkpoint,
    samples: &[Vec<u32>],
    backend: &B,
    compute: Compute<'_>,
    options: &PipelineOptions,
    progress: &mut dyn Progress,
) -> Result<QuantizedModel> {
    let mut warnings = check_model(checkpoint, options)?;
    for w in &warnings {
        progress.event(Event::Warning(w.clone()));
    }
    if samples.is_empty() {
        return Err(PipelineError::Invalid("no calibration samples".into()));
    }
    let config = checkpoint.config();
    let layers = config.num_hidden_layers;
    let mut run = Run {
        gptq: Gptq::new(backend, options.config.clone()).with_options(options.solve),
        grid: options.grid(),
        format: options.checkpoint_format(),
        times: StageTimes::default(),
        linears: Vec::new(),
        modules: Vec::new(),
    };
    let resume = options.resume_dir.as_deref().map(|dir| {
        ResumeDir::new(
            dir,
            checkpoint,
            samples,
            options,
            &run_name(backend, &compute),
        )
    });
    let saved = match &resume {
        Some(resume) => saved_run(resume, config, options, layers, &mut warnings, progress)?,
        None => None,
    };
    let resumed = saved.as_ref().map(|saved| Resumed {
        layers: saved.next_layer,
        times: saved.times,
    });
    let (first_layer, mut batches) = match saved {
        Some(saved) => {
            run.times = saved.times;
            run.linears = saved.linears;
            run.modules = saved.modules;
            (saved.next_layer, saved.batches)
        }
        None => (
            0,
            layer_zero_inputs(checkpoint, samples, options, &mut run, progress)?,
        ),
    };

    // A resumed run counts only the layers it does, so that rates and estimates stay true.
    let name = if first_layer == 0 {
        "quantizing layers".to_string()
    } else {
        format!("quantizing layers {} to {layers}", first_layer + 1)
    };
    progress.event(Event::Stage {
        name,
        total: (layers - first_layer) as u64,
    });
    let mut layer_seconds = Vec::with_capacity(layers - first_layer);
    for index in first_layer..layers {
        progress.event(Event::Message(format!("layer {}/{layers}", index + 1)));
        let done_before = run.linears.len();
        let t = Instant::now();
        let layer_start = t;
        let mut layer = checkpoint.load_layer(index)?;
        let mut forward = t.elapsed().as_secs_f64();
        // Nothing reads the last layer's output (the pipeline stops before the final norm).
        let last = index + 1 == layers;
        if options.true_sequential {
            run.true_sequential_layer(
                &mut layer,
                &mut batches,
                compute,
                last,
                &mut forward,
                progress,
            )?;
        } else {
            run.hooked_layer(
                &mut layer,
                &mut batches,
                compute,
                last,
                &mut forward,
                progress,
            )?;
        }
        run.times.calibration_forward += forward;
        if let Some(resume) = &resume {
            let t = Instant::now();
            let next_input = (!last).then_some(&batches[..]);
            let done = &run.linears[done_before..];
            resume.save(index, done, next_input, &run.modules, &run.times)?;
            run.times.write += t.elapsed().as_secs_f64();
        }
        layer_seconds.push(layer_start.elapsed().as_secs_f64());
        progress.event(Event::Advance(1));
    }
    progress.event(Event::StageDone);
    if let Some(w) = raised_damping(&run.modules, options.config.damp_percent()) {
        progress.event(Event::Warning(w.clone()));
        warnings.push(w);
    }
    Ok(QuantizedModel {
        linears: run.linears,
        modules: run.modules,
        times: run.times,
        resumed,
        layer_seconds,
        format: run.format,
        warnings,
        tokens: samples.iter().map(Vec::len).sum(),
    })
}

/// The calibration batches embedded: the inputs of decoder layer 0.
fn layer_zero_inputs<B: Backend>(
    checkpoint: &Checkpoint,
    samples: &[Vec<u32>],
    options: &PipelineOptions,
    run: &mut Run<'_, B>,
    progress: &mut dyn Progress,
) -> Result<Vec<Batch>> {
    progress.event(Event::Stage {
        name: "capturing layer-0 inputs".into(),
        total: 1,
    });
    let t = Instant::now();
    let table = checkpoint.load_embedding()?;
    let batches = samples
        .chunks(options.batch_sequences.max(1))
        .map(|group| {
            let tokens: Vec<u32> = group.concat();
            Ok(Batch {
                hidden: embed(table.view(), &tokens)?,
                lens: group.iter().map(Vec::len).collect(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    run.times.calibration_forward += t.elapsed().as_secs_f64();
    progress.event(Event::Advance(1));
    progress.event(Event::StageDone);
    Ok(batches)
}

/// What `resume` holds for this run, with a warning either way when something was there.
fn saved_run(
    resume: &ResumeDir,
    config: &gptq_model::ModelConfig,
    options: &PipelineOptions,
    layers: usize,
    warnings: &mut Vec<String>,
    progress: &mut dyn Progress,
) -> Result<Option<Saved>> {
    let dir = resume.path().display();
    let (saved, warning) = match resume.load(config, options)? {
        Found::Nothing => return Ok(None),
        Found::OtherRun => (
            None,
            format!(
                "{dir} held the saved state of another run (another model, calibration, \
                 settings or backend): it was removed, and this run starts from layer 0"
            ),
        ),
        Found::Saved(saved) => {
            let has_input = saved.next_layer == layers || !saved.batches.is_empty();
            let every_linear = saved.linears.len() == saved.next_layer * LinearId::ALL.len();
            if saved.next_layer > layers || !has_input || !every_linear {
                return Err(PipelineError::Invalid(format!(
                    "the run state saved in {dir} is incomplete ({} linears and {} activation \
                     batches after {} of {layers} layers): delete that directory to start the \
                     run over",
                    saved.linears.len(),
                    saved.batches.len(),
                    saved.next_layer
                )));
            }
            let warning = format!(
                "resuming after layer {} of {layers}, from the state an interrupted run saved \
                 in {dir}",
                saved.next_layer
            );
            (Some(saved), warning)
        }
    };
    progress.event(Event::Warning(warning.clone()));
    warnings.push(warning);
    Ok(saved)
}

/// A warning when some linears needed more damping than asked for: their Hessians were singular
/// (too few calibration tokens for their width, or `damp_percent` 0), so they were solved with a
/// different damping than the checkpoint's `damp_percent` records.
fn raised_damping(modules: &[ModuleReport], asked: f64) -> Option<String> {
    let raised: Vec<f64> = modules
        .iter()
        .map(|m| m.damp_percent)
        .filter(|&d| d > asked)
        .collect();
    let most = raised.iter().copied().fold(f64::NAN, f64::max);
    (!raised.is_empty()).then(|| {
        format!(
            "damping was raised above damp_percent {asked} for {} of {} linears (up to {most}) \
             because their Hessians were not positive definite: calibrate on more tokens, or \
             ask for that damping; the report lists each linear's damp_percent",
            raised.len(),
            modules.len()
        )
    })
}

/// The sequence and the position in it of row `row` of a batch of sequences `lens` long.
fn sequence_of_row(lens: &[usize], mut row: usize) -> (usize, usize) {
    for (sequence, &len) in lens.iter().enumerate() {
        if row < len {
            return (sequence, row);
        }
        row -= len;
    }
    (lens.len(), row)
}

/// The error for a calibration activation that is NaN or infinite: the forward pass overflowed
/// (every weight was checked finite when it was loaded).
fn overflowed(
    layer: usize,
    ids: &[LinearId],
    value: f64,
    sample: usize,
    token: usize,
) -> PipelineError {
    let names: Vec<&str> = ids.iter().map(|id| id.hf_name()).collect();
    PipelineError::Invalid(format!(
        "layer {layer}: the input of {} is {value} at calibration sample {sample}, token \
         {token} (counting from 0): the forward pass left f32's range there, which finite \
         weights only do when they are corrupt or far outside the range they were trained in \
         (`gptq eval` on the unquantized model tells whether it does so too)",
        names.join(", ")
    ))
}

/// The state of a run: the solver and what it has produced so far.
struct Run<'b, B: Backend> {
    gptq: Gptq<&'b B>,
    grid: gptq_quant::MinMaxGrid,
    format: CheckpointFormat,
    times: StageTimes,
    linears: Vec<QuantizedLinear>,
    modules: Vec<ModuleReport>,
}

impl<B: Backend> Run<'_, B> {
    /// One layer true-sequentially: each group of linears is quantized as soon as its input
    /// is computed, and the later stages (and the layer's output, unless it is the `last`) are
    /// computed with the quantized weights.
    fn true_sequential_layer(
        &mut self,
        layer: &mut DecoderLayer,
        batches: &mut [Batch],
        compute: Compute<'_>,
        last: bool,
        forward: &mut f64,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        let output = if last {
            LayerOutput::Unused
        } else {
            LayerOutput::Needed
        };
        run_stages(
            layer,
            batches,
            compute,
            output,
            forward,
            &mut |ids, inputs, lens, layer| {
                let hessian = self.hessian(layer.index, ids, inputs, lens)?;
                self.quantize(layer, ids, &hessian, progress)
            },
        )
    }

    /// One layer as the reference does without true-sequential: every Hessian from a pass with
    /// the full-precision weights, then every linear quantized, then (unless it is the `last`)
    /// the layer's output from a second pass with the quantized weights.
    fn hooked_layer(
        &mut self,
        layer: &mut DecoderLayer,
        batches: &mut Vec<Batch>,
        compute: Compute<'_>,
        last: bool,
        forward: &mut f64,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        let original = (!last).then(|| batches.clone());
        let mut hessians = Vec::new();
        let unused = LayerOutput::Unused;
        run_stages(
            layer,
            batches,
            compute,
            unused,
            forward,
            &mut |ids, inputs, lens, layer| {
                hessians.push((ids, self.hessian(layer.index, ids, inputs, lens)?));
                Ok(())
            },
        )?;
        for (ids, hessian) in &hessians {
            self.quantize(layer, ids, hessian, progress)?;
        }
        if let Some(original) = original {
            let t = Instant::now();
            *batches = original
                .into_iter()
                .map(|b| {
                    Ok(Batch {
                        hidden: forward_layer(layer, b.hidden.view(), &b.lens, compute)?,
                        lens: b.lens,
                    })
                })
                .collect::<Result<_>>()?;
            *forward += t.elapsed().as_secs_f64();
        }
        Ok(())
    }

    /// The Hessian of the input that the linears `ids` of layer `layer` share, from the
    /// calibration batches `inputs` (holding sequences of `lens` tokens).
    fn hessian(
        &mut self,
        layer: usize,
        ids: &[LinearId],
        inputs: &[Array2<f32>],
        lens: &[&[usize]],
    ) -> Result<B::Hessian> {
        let t = Instant::now();
        let columns = inputs[0].ncols();
        let context = || format!("Hessian of a {columns}-column input");
        let mut acc = self
            .gptq
            .accumulator(columns)
            .map_err(PipelineError::quantization(context()))?;
        let mut samples_before = 0;
        for (x, lens) in inputs.iter().zip(lens) {
            acc.add_batch(&ActivationBatch::new(x.view()).sequences(lens.len()))
                .map_err(|e| match e {
                    GptqError::NonFinite {
                        value, position, ..
                    } => {
                        let (sample, token) = sequence_of_row(lens, position.row);
                        overflowed(layer, ids, value, samples_before + sample, token)
                    }
                    other => PipelineError::quantization(context())(other),
                })?;
            samples_before += lens.len();
        }
        let hessian = acc
            .finish()
            .map_err(PipelineError::quantization(context()))?;
        self.times.hessian += t.elapsed().as_secs_f64();
        Ok(hessian)
    }

    /// Quantizes the linears `ids` of `layer` against `hessian`, replacing their weights by the
    /// quantized result (dequantized, and the codes for products that multiply those) so that
    /// later stages see them.
    ///
    /// The linears of a group (q/k/v, gate/up) are solved concurrently: much of a solve (the
    /// column loop of small blocks, the factorization of a 576-column Hessian) cannot use two
    /// threads on its own, and the linears are independent given their shared Hessian.
    fn quantize(
        &mut self,
        layer: &mut DecoderLayer,
        ids: &[LinearId],
        hessian: &B::Hessian,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        let names: Vec<&str> = ids.iter().map(|id| id.hf_name()).collect();
        progress.event(Event::Message(format!(
            "layer {} {}",
            layer.index,
            names.join(", ")
        )));
        let t = Instant::now();
        let (gptq, grid, shared) = (&self.gptq, &self.grid, &*layer);
        let solved: Vec<Result<QuantizedLayer>> = ids
            .par_iter()
            .map(|&id| {
                gptq.quantize_with_grid(shared.linear(id).weight.view(), hessian, grid)
                    .map_err(PipelineError::quantization(id.tensor_prefix(shared.index)))
            })
            .collect();
        self.times.solve += t.elapsed().as_secs_f64();
        for (&id, quantized) in ids.iter().zip(solved) {
            let quantized = quantized?;
            let name = id.tensor_prefix(layer.index);
            let t = Instant::now();
            let packed = pack(&quantized.tensor, self.format)
                .map_err(PipelineError::quantization(name.clone()))?;
            self.times.pack += t.elapsed().as_secs_f64();
            let (rows, columns) = layer.linear(id).weight.dim();
            layer.linear_mut(id).set_quantized(quantized.tensor)?;
            let report = &quantized.report;
            self.modules.push(ModuleReport {
                layer: layer.index,
                module: id.hf_name().to_string(),
                rows,
                columns,
                loss: report.loss,
                damp_percent: report.damping.damp_percent,
                dead_columns: report.dead_columns,
                seconds: report.timings.total.as_secs_f64(),
            });
            self.linears.push(QuantizedLinear {
                layer: layer.index,
                id,
                packed,
            });
        }
        Ok(())
    }
}

/// A stage callback: the linears that share an input, that input per batch, the batches'
/// sequence lengths, and the layer (whose weights the callback may replace).
type OnGroup<'a> = dyn FnMut(&'static [LinearId], &[Array2<f32>], &[&[usize]], &mut DecoderLayer) -> Result<()>
    + 'a;

/// Whether a [`run_stages`] caller reads the layer's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LayerOutput {
    /// `batches` must end up holding the layer's output.
    Needed,
    /// Stop after the last group's input: `down_proj`'s product (a fifth of the layer's work)
    /// is skipped and `batches` are left holding an intermediate sum.
    Unused,
}

/// Runs one decoder layer stage by stage ([`LayerStage`]) over all batches, calling `on_group`
/// with the input of each group of linears before that group is used; with
/// [`LayerOutput::Needed`], `batches` end up holding the layer's output. Time spent outside
/// `on_group` is added to `forward`.
///
/// Each stage consumes its input batch by batch, so at any time the residual stream, one
/// stage's input and the next stage's output are held, never two whole stage activations
/// beside each other.
fn run_stages(
    layer: &mut DecoderLayer,
    batches: &mut [Batch],
    compute: Compute<'_>,
    output: LayerOutput,
    forward: &mut f64,
    on_group: &mut OnGroup<'_>,
) -> Result<()> {
    let lens: Vec<Vec<usize>> = batches.iter().map(|b| b.lens.clone()).collect();
    let lens: Vec<&[usize]> = lens.iter().map(Vec::as_slice).collect();
    let mut inputs: Vec<Option<Array2<f32>>> = vec![None; batches.len()];
    for stage in LayerStage::ALL {
        let t = Instant::now();
        let layer_now = &*layer;
        let next = batches
            .iter_mut()
            .zip(inputs)
            .zip(&lens)
            .map(|((b, previous), lens)| {
                Ok(stage.input(layer_now, &mut b.hidden, previous, lens, compute)?)
            })
            .collect::<Result<Vec<_>>>()?;
        *forward += t.elapsed().as_secs_f64();
        on_group(stage.linears(), &next, &lens, layer)?;
        inputs = next.into_iter().map(Some).collect();
    }
    if output == LayerOutput::Unused {
        return Ok(());
    }
    let t = Instant::now();
    for (b, inner) in batches.iter_mut().zip(inputs) {
        finish_layer(layer, &mut b.hidden, inner, compute)?;
    }
    *forward += t.elapsed().as_secs_f64();
    Ok(())
}
