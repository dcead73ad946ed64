"""Every config key the pipeline knows, with its default.

Config files in configs/ start from `get_config()` and change what they need, so an
override of a key that is not listed here is an error rather than a silent no-op.
"""
import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = 'train'
  c.seed = 0
  c.distributed = False  # call jax.distributed.initialize() (multi-host TPU/GPU) ...
  # ... with these, where the cluster is not detected (e.g. N processes on one machine):
  c.coordinator_address = config_dict.placeholder(str)  # host:port of process 0
  c.num_processes = config_dict.placeholder(int)
  c.process_id = config_dict.placeholder(int)
  # JAX's persistent compilation cache: a rerun or resumed trial with the same shapes skips
  # XLA compilation. None: ~/.cache/recipe_jax/jax_cache; '' turns it off.
  c.compilation_cache_dir = config_dict.placeholder(str)

  # Pretrain, then fine-tune: start from another run's weights, by name where shapes match.
  c.init_from = config_dict.placeholder(str)  # a run directory or RUN/checkpoints/<step>
  c.init_from_skip = ''  # comma-separated parameter names kept freshly initialised
  c.init_from_freeze = ''  # comma-separated parameter names the optimizer leaves fixed

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'mnist1d'  # mnist1d | digits | npz:PATH | any TFDS name
  c.dataset.data_dir = config_dict.placeholder(str)  # None: TFDS default
  c.dataset.val_fraction = 0.1  # carved from train; test never selects models
  c.dataset.train_fraction = 1.0  # < 1: train on a random subset (data_scaling sets it) ...
  c.dataset.subset_seed = 0  # ... drawn from this seed; smaller subsets nest in larger ones
  c.dataset.normalize = True  # standardise with train-split statistics
  c.dataset.downsample = 1  # > 1: average-pool inputs by this factor (a smaller input)
  c.dataset.stats_from = config_dict.placeholder(str)  # inspect run dir or input_stats.json
  c.dataset.image_key = 'image'  # feature names for TFDS datasets
  c.dataset.label_key = 'label'
  c.dataset.test_split = 'test'  # the TFDS split tested on at the end (ImageNet: 'validation')
  # device: the training split in device memory | grain: streamed from storage (npz members
  # memory-mapped, TFDS prepared as array_record) | auto: grain when the split (as float32)
  # needs more than device_memory_fraction of one device's memory
  c.dataset.pipeline = 'device'
  c.dataset.device_memory_fraction = 0.5
  c.dataset.grain_threads = 4  # threads reading the next batches ahead of the loop (grain)
  c.dataset.prefetch_batches = 8

  c.model = ml_collections.ConfigDict()
  c.model.name = 'mlp'  # see recipe_jax.model.models.MODELS, or package.module:Factory
  c.model.width = config_dict.placeholder(int)  # None: the model's reference width
  c.model.depth = config_dict.placeholder(int)  # mlp, cnn1d, vit; None: the reference depth
  c.model.dropout = 0.0  # mlp, cnn1d, cnn2d: before the classifier; vit: in every block
  # vit only (None: the model's default): attention heads (divide width), the MLP's width as a
  # multiple of width, the side of a patch (images) or its length (1-D), cls | mean pooling
  c.model.heads = config_dict.placeholder(int)
  c.model.mlp_ratio = config_dict.placeholder(float)
  c.model.patch_size = config_dict.placeholder(int)
  c.model.pool = config_dict.placeholder(str)
  c.model.log_prior_output_bias = True  # "init well": final bias = log class priors

  c.loss = 'cross_entropy'  # or package.module:function, (logits, labels) -> per-example losses

  # Regularisation (recipe step 4): each off by default.
  c.label_smoothing = 0.0  # cross_entropy only; evaluation reports the plain loss
  c.ema_decay = 0.0  # > 0: evaluate an exponential moving average of the weights
  c.augment = ml_collections.ConfigDict()  # inside the jitted step, keys from (seed, step)
  c.augment.shift = 0  # 1-D: circular shift by up to this many positions
  c.augment.scale = 0.0  # 1-D: multiply by U(1 - scale, 1 + scale)
  c.augment.noise = 0.0  # any input: add N(0, noise^2)
  c.augment.crop_padding = 0  # images: zero-pad this much, then crop back at random
  c.augment.flip = False  # images: random horizontal flip (only where flips keep the label)
  c.augment.mixup = 0.0  # > 0: Beta(alpha, alpha) blend with a random training example ...
  c.augment.cutmix = 0.0  # ... or paste a segment / box of it; soft targets (both: half each)
  c.early_stopping = ml_collections.ConfigDict()
  c.early_stopping.patience = 0  # > 0: stop after this many evals without improvement
  c.early_stopping.min_delta = 0.0  # an eval_accuracy gain up to this is not an improvement

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = 'adam'  # adam | adamw | sgd
  c.optimizer.learning_rate = 3e-4  # the recipe's safe Adam default
  c.optimizer.momentum = 0.9  # sgd only
  c.optimizer.weight_decay = 0.0  # adamw only (decoupled)
  c.optimizer.schedule = 'constant'  # constant | cosine | warmup_cosine | linear | step
  c.optimizer.warmup_steps = 0  # linear warmup from 0, before any schedule
  c.optimizer.decay_at = (0.5, 0.75)  # step: fractions of the (post-warmup) run ...
  c.optimizer.decay_factor = 0.1  # ... where the learning rate is multiplied by this
  c.optimizer.grad_clip_norm = config_dict.placeholder(float)
  c.optimizer.accumulate_steps = 1  # > 1: each batch as this many micro-batches, one update

  c.batch_size = 100  # global, split over all devices
  c.eval_batch_size = 1000
  c.num_train_steps = 6000
  c.log_every_steps = 100
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 1000
  c.max_to_keep = 3
  c.divergence_factor = 100.0  # stop when loss > factor * initial loss
  c.eval_train_split = False  # also evaluate the whole training split at the end
  c.max_train_val_gap = 0.1  # train stage: WARN when train - validation accuracy exceeds this
  c.monitor_layers = True  # per-layer norms, update ratios, dead units at every eval (TensorBoard)
  c.profile_steps = 0  # > 0: a jax.profiler trace of this many steps after compilation ...
  # ... in DIR/profile (TensorBoard's profile tab, or https://ui.perfetto.dev)
  # compare, squeeze, lr_find: train a config's seeds as one vmapped program (side_by_side.py)
  # on | off | auto: on for GPU and TPU; off on CPU, where batched convolutions were slower
  # (scripts/bench_seeds.py: MNIST-1D MLP 1.3x faster, CNN 0.8x)
  c.seeds_side_by_side = 'auto'
  c.compute_dtype = 'float32'  # float32 | bfloat16: activations and matmuls (built-in models);
  # parameters, optimizer state, loss and softmax stay float32
  # Experiment tracking (runs/tracking.py): none | mlflow | wandb (pip install -e ".[mlflow]")
  c.tracking = 'none'
  c.tracking_uri = ''  # MLflow's tracking URI ('': MLFLOW_TRACKING_URI or MLflow's default)
  c.tracking_project = 'recipe_jax'  # the MLflow experiment, or the W&B project

  c.overfit = ml_collections.ConfigDict()  # stage='overfit'
  c.overfit.target_accuracy = 0.99  # on the whole training split, eval mode

  c.human_baseline = config_dict.placeholder(float)  # your own accuracy on these examples

  c.sanity = ml_collections.ConfigDict()  # stage='sanity'
  c.sanity.seed_steps = 10  # fixed seed: runs this long are compared bit for bit
  c.sanity.init_loss_batches = 20  # loss at init: batches measured ...
  c.sanity.init_loss_batch_size = 64  # ... of this size (fixed: the spread depends on it)
  c.sanity.init_loss_max_z = 5.0  # flagged beyond this many batch-to-batch std from expected
  c.sanity.init_loss_max_ratio = 2.0  # too high: WARN below this many x expected, FAIL from it
  c.sanity.dependency_examples = 8  # backprop dependency check batch
  c.sanity.steps = 500  # short runs: model vs zero-input baseline, decreasing loss, dynamics
  c.sanity.baseline_margin = 0.05  # model must beat the zero-input baseline by this accuracy
  c.sanity.min_loss_drop = 0.1  # relative fall of the loss, first vs last 10% of the run
  c.sanity.dynamics_every = 25  # record predictions on a fixed val batch this often ...
  c.sanity.dynamics_examples = 16  # ... of this many examples
  c.sanity.overfit_examples = 8  # overfit one batch of this many training examples ...
  c.sanity.overfit_steps = 500  # ... within this many steps ...
  c.sanity.overfit_max_loss = 0.05  # ... to at most this loss and 100% accuracy
  # Inside the net (diagnose/inside.py), at init and after the short run:
  c.sanity.max_gradient_ratio = 1e3  # FAIL: first / last layer gradient beyond this either way
  c.sanity.max_relative_gradient = 10.0  # FAIL (exploding): a layer's gradient / its weights
  c.sanity.max_dead_fraction = 0.5  # FAIL: this share of a layer's ReLUs zero for a whole batch
  c.sanity.max_saturated_fraction = 0.5  # FAIL: this share of sigmoid/tanh outputs saturated
  # After the short run, dead or saturated units FAIL only when less than this share of the
  # gradient arriving at them passes their nonlinearity (against its peak slope)
  c.sanity.min_gradient_share = 0.1
  c.sanity.max_copied_units = 0.5  # FAIL: this share of a hidden layer's units start as copies
  # When the loss does not fall or one batch is not memorised: one-batch runs at these multiples
  # of the learning rate tell a rate far off from other causes (the diagnosis)
  c.sanity.lr_sweep = (0.1, 10.0, 100.0)

  c.lr_find = ml_collections.ConfigDict()  # stage='lr_find': exponential LR range test
  c.lr_find.min_lr = 1e-6
  c.lr_find.max_lr = 10.0
  c.lr_find.steps = 300
  c.lr_find.seeds = 3  # the suggestion's spread over this many seeds is reported
  c.lr_find.smoothing = 0.9  # EMA factor for the loss curve
  c.lr_find.stop_factor = 4.0  # the curve ends where the smoothed loss exceeds this x its min
  c.lr_find.max_spread_factor = 3.0  # WARN when the seeds' suggestions span more than this

  c.compare = ml_collections.ConfigDict()  # stage='compare': one change at a time
  c.compare.variants = '{}'  # JSON {"name": {"config.key": value, ...}, ...}
  c.compare.seeds = 3
  c.compare.metric = 'eval_accuracy'  # from each run's summary.json; or eval_loss (minimised)
  c.compare.storage = config_dict.placeholder(str)  # a study URL: workers split the runs
  c.compare.study_name = config_dict.placeholder(str)  # None: derived from the workdir
  c.compare.heartbeat_s = 30  # a silent worker's run is retried after 2x this

  c.tune = ml_collections.ConfigDict()  # stage='tune': a search on Optuna, many workers
  c.tune.space = '{}'  # JSON {"config.key": {"type": "float"|"int"|"categorical", ...}}
  c.tune.sampler = 'qmc'  # qmc (quasi-random, seeded from seed) | random | tpe | gp
  c.tune.trials = 20  # for the whole study, over all workers
  c.tune.metric = 'eval_accuracy'  # or eval_loss (minimised); the test split never selects
  c.tune.pruner = 'none'  # none | median | hyperband, fed the metric at every eval
  c.tune.pruner_startup_trials = 5  # median: prunes once this many trials have finished
  c.tune.storage = config_dict.placeholder(str)  # None: sqlite:///DIR/tune/study.db
  c.tune.study_name = config_dict.placeholder(str)  # None: derived from the workdir
  c.tune.heartbeat_s = 30  # a RUNNING trial silent for 2x this is retried elsewhere

  c.data_scaling = ml_collections.ConfigDict()  # stage='data_scaling': is more data worth it?
  c.data_scaling.fractions = (0.125, 0.25, 0.5, 1.0)  # of the training split, nested subsets
  c.data_scaling.seeds = 2  # each fraction with this many seeds (subset and init)
  c.data_scaling.flat_gain = 0.005  # "flattened" when doubling gains at most this accuracy
  c.data_scaling.max_fit_rms = 0.02  # WARN: the power law misses the mean errors by more
  c.data_scaling.max_gain_range = 0.03  # WARN: the doubling gain's 68% range is wider

  c.squeeze = ml_collections.ConfigDict()  # stage='squeeze': ensembles, SWA, TTA, distillation
  c.squeeze.members = 'seeds:5'  # seeds:N | tune:DIR (its top_k trials) | DIR1,DIR2,...
  c.squeeze.top_k = 5
  c.squeeze.swa_steps = 1000  # continue the best member this long (0: no SWA / EMA rows) ...
  c.squeeze.swa_every = 50  # ... averaging a snapshot this often ...
  c.squeeze.swa_learning_rate = config_dict.placeholder(float)  # ... None: optimizer's / 10
  c.squeeze.ema_decay = 0.99  # the EMA row, over the same continuation
  c.squeeze.tta_copies = 8  # augmented copies averaged at test time (models with augmentation)
  c.squeeze.student = ''  # JSON overrides for a distilled student, e.g. '{"model.width": 8}'
  c.squeeze.temperature = 4.0  # softens the ensemble's probabilities for the student
  c.squeeze.tolerance = 0.01  # WARN when SWA / TTA lose more validation accuracy than this

  # stage='replicate': a finished run's result, or its seed's luck? (rerun on other seeds)
  c.replicate = ml_collections.ConfigDict()
  c.replicate.run_dir = config_dict.placeholder(str)  # the --workdir of a finished train run
  c.replicate.seeds = 4  # other seeds (seed+1 ..); its own seed is rerun too (reproduced?)
  # JSON {"config.key": [change, ...]}, each on the same seeds: "x1.5" multiplies, "/1.5"
  # divides, any other value replaces ('{}': none). A change beyond noise: a sensitive key
  c.replicate.perturbations = '{"optimizer.learning_rate": ["/1.5", "x1.5"]}'
  c.replicate.metric = 'eval_accuracy'
  c.replicate.interval = 0.95  # WARN (lucky seed) outside this prediction interval of a seed

  # stage='scale_up': do compare's (or tune's) conclusions hold at a larger scale?
  c.scale_up = ml_collections.ConfigDict()
  c.scale_up.from_dir = config_dict.placeholder(str)  # the --workdir of a compare or tune stage
  c.scale_up.source = 'compare'  # compare: its variants and seeds | tune: its top_k trials
  c.scale_up.top_k = 4
  # JSON {"config.key": change}, applied to every run ("x10" multiplies, "/2" divides, a
  # value replaces), e.g. {"num_train_steps": "x10", "model.width": "x4"}
  c.scale_up.changes = '{"num_train_steps": "x10"}'
  c.scale_up.min_rank_correlation = 0.5  # WARN below this Spearman correlation of the means

  c.recipe = ml_collections.ConfigDict()  # stage='recipe': the stages in order, one workdir
  c.recipe.stages = 'inspect,sanity,lr_find,overfit,compare,tune,squeeze'  # + data_scaling
  c.recipe.continue_on_fail = False  # a FAIL in inspect or sanity stops the recipe
  c.recipe.pin_learning_rate = False  # True: keep optimizer.learning_rate, not lr_find's
  c.recipe.overrides = '{}'  # JSON {"stage": {"config.key": value}}: keys for one stage only
  c.recipe.rerun = ''  # stages to redo (comma-separated); later stages they change are redone too

  c.analysis = ml_collections.ConfigDict()  # error analysis after every finished train run
  c.analysis.enabled = True
  c.analysis.split = 'val'  # val | test (only when asked: never used to select) | train
  c.analysis.max_recall_gap = 0.2  # WARN: a class's recall this far below the median recall
  c.analysis.max_ece = 0.05  # WARN: expected calibration error above this
  c.analysis.calibration_bins = 15  # equal-mass bins for the ECE and the reliability diagram
  c.analysis.top_confusions = 5  # (true, predicted) pairs in the evidence
  c.analysis.examples = 16  # most confident mistakes drawn

  c.evaluate = ml_collections.ConfigDict()  # stage='evaluate': analyse a run, no training
  c.evaluate.run_dir = config_dict.placeholder(str)  # the --workdir of a train run
  c.evaluate.step = config_dict.placeholder(int)  # None: the state the run reports

  c.inspect = ml_collections.ConfigDict()  # stage='inspect'
  c.inspect.max_imbalance = 3.0  # WARN when largest / smallest train class exceeds this
  c.inspect.leakage_rms_threshold = 0.1  # FAIL: val/test this close (RMS, standardised) to train
  c.inspect.examples_per_class = 8  # in the sample grid
  c.inspect.outlier_z = 5.0  # WARN: robust z of the distance to the class mean above this
  c.inspect.cv_folds = 5  # label noise: k-fold cross-validated small MLP ...
  c.inspect.cv_steps = 300  # ... trained full batch for this many Adam steps per fold
  c.inspect.cv_max_examples = 20000  # ... on at most this many train examples (random subset)
  c.inspect.cv_min_accuracy = 0.8  # below this the model is too weak to judge labels
  # Train against test and validation (shift_checks.py), on at most this many rows a split:
  c.inspect.shift_max_examples = 5000
  c.inspect.drift_alpha = 0.01  # a feature drifts: KS test at this false discovery rate ...
  c.inspect.drift_min_ks = 0.1  # ... and a KS statistic of at least this
  c.inspect.domain_warn_auc = 0.7  # a classifier tells the splits apart: WARN from this AUC ...
  c.inspect.domain_fail_auc = 0.9  # ... FAIL from this
  c.inspect.label_drift_warn_v = 0.1  # class proportions differ: WARN from this Cramér's V ...
  c.inspect.label_drift_fail_v = 0.3  # ... FAIL from this
  c.inspect.train_to_test_z = 4.0  # FAIL: a model of train is this many errors worse on test
  c.inspect.shortcut_score = 0.8  # WARN: one feature or patch predicts the label this well
  # Structure along a file's rows (row_structure.py): WARN for a block of rows whose inputs
  # differ by this many standard deviations within their classes, once a trend is removed ...
  c.inspect.block_min_effect = 1.0
  c.inspect.trend_min_r2 = 0.2  # ... or for a straight line along the rows explaining this much
  return c
