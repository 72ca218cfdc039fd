"""Every configuration key, its type and default, with one comment each.

An ``.ini`` file (sections ``[DATA]``, ``[MODEL]``, ``[LOSS]``, ``[TRAIN]``,
``[TEST]``, ``[TARGET]``) is merged onto these defaults by ``utils.config.load_config``;
values are parsed to the type of the default. The configuration reference
(docs/configs.md) is generated from the comments in this file
(``python tools/config_reference.py``).
"""
from yacs.config import CfgNode as CN

DEFAULTS = CN()

DEFAULTS.DATA = CN()
# Dataset to use (a reader registered in data.DATASETS).
DEFAULTS.DATA.DATASET_NAME = "regdb"
# Dataset root folder; empty = the environment variable REGDB_ROOT, SYSUMM_ROOT or LLCM_ROOT.
DEFAULTS.DATA.ROOT = ""
# Split to train and test on, for datasets in fixed train/test splits (RegDB: 1..10); each trial's model is trained on that trial only.
DEFAULTS.DATA.TRIAL = 1
# Training identities held out (with both modalities) as a cross-modality validation split, evaluated with the dataset's own protocol; 0 = none. Any dataset.
DEFAULTS.DATA.VAL_IDS = 0
# Training image size (height, width).
DEFAULTS.DATA.SIZE_TRAIN = (384, 128)
# Test image size (height, width).
DEFAULTS.DATA.SIZE_TEST = (384, 128)
# Resize filter of training and test images: bilinear or lanczos (PIL's LANCZOS, formerly ANTIALIAS, which AGW, CAJ and DEEN pre-resize with); the decoded cache keeps a store per filter.
DEFAULTS.DATA.RESIZE = "bilinear"
# Probability of a horizontal flip in training.
DEFAULTS.DATA.FLIP_PROB = 0.5
# Pixels of zero padding before the random crop back to SIZE_TRAIN; 0 = no pad-and-crop.
DEFAULTS.DATA.PADDING = 10
# Probability of random erasing in training; 0 = off.
DEFAULTS.DATA.RE_PROB = 0.5
# Random erasing: range of the erased area as a fraction of the image (min, max).
DEFAULTS.DATA.RE_AREA = (0.02, 0.4)
# Random erasing: smallest aspect ratio of the erased box (the largest is its inverse).
DEFAULTS.DATA.RE_MIN_RATIO = 0.3
# Random erasing: aspect draw, log (log-uniform in [RE_MIN_RATIO, 1/RE_MIN_RATIO], boxes of at least 1 pixel each way) or uniform (CAJ/DEEN's rule: uniform in that range, a box is accepted when h < H and w < W, so one rounding to 0 pixels is accepted and erases nothing; only the random number stream differs from theirs).
DEFAULTS.DATA.RE_ASPECT = "log"
# Random erasing: tries at drawing a box that fits before giving up on the image (CAJ/DEEN: 100).
DEFAULTS.DATA.RE_TRIES = 10
# Random erasing: fill of the box per channel (R, G, B) in normalised space; 0 = the dataset mean colour (CAJ: 0.4914, 0.4822, 0.4465; DEEN: 0.485, 0.456, 0.406).
DEFAULTS.DATA.RE_FILL = (0.0, 0.0, 0.0)
# Probability of turning a visible training image to grayscale (3 equal channels).
DEFAULTS.DATA.GRAY_PROB_VISIBLE = 0.0
# Probability of turning an infrared training image to grayscale (3 equal channels).
DEFAULTS.DATA.GRAY_PROB_INFRARED = 0.0
# Probability of the channel rule random: one of R, G, B or gray (uniformly) copied to all three channels.
DEFAULTS.DATA.CHANNEL_AUG_PROB = 0.0
# Channel rule of visible images, on the normalised image after erasing: none, random (see CHANNEL_AUG_PROB), exchange (CAJ's ChannelExchange: R, G or B, 1/3 each, never gray) or adaptive_gray (CAJ's ChannelAdapGray: R, G, B 1/4 each, gray 1/8, unchanged 1/8).
DEFAULTS.DATA.CHANNEL_AUG_VISIBLE = "random"
# Channel rule of the visible copies (VISIBLE_COPY); choices as CHANNEL_AUG_VISIBLE.
DEFAULTS.DATA.CHANNEL_AUG_COPY = "exchange"
# Channel rule of infrared images; choices as CHANNEL_AUG_VISIBLE.
DEFAULTS.DATA.CHANNEL_AUG_INFRARED = "random"
# Channel rule of the infrared copies (INFRARED_COPY); choices as CHANNEL_AUG_VISIBLE, plus the methods' matrix rules (MSCMNet's green_or_gray, channel_scale).
DEFAULTS.DATA.CHANNEL_AUG_INFRARED_COPY = "none"
# Pixel rule of visible images, on the resized uint8 image before pad and crop: none, or one a method registers (MSCMNet's grayscale: RandomGrayscale(0.5); brightness: ColorJitter(brightness=0.5)).
DEFAULTS.DATA.PIXEL_AUG_VISIBLE = "none"
# Pixel rule of the visible copies (VISIBLE_COPY); choices as PIXEL_AUG_VISIBLE.
DEFAULTS.DATA.PIXEL_AUG_COPY = "none"
# Pixel rule of infrared images; choices as PIXEL_AUG_VISIBLE.
DEFAULTS.DATA.PIXEL_AUG_INFRARED = "none"
# Pixel rule of the infrared copies (INFRARED_COPY); choices as PIXEL_AUG_VISIBLE.
DEFAULTS.DATA.PIXEL_AUG_INFRARED_COPY = "none"
# Per-channel normalisation mean (RGB order).
DEFAULTS.DATA.NORMALIZATION_MEAN = (0.485, 0.456, 0.406)
# Per-channel normalisation standard deviation (RGB order).
DEFAULTS.DATA.NORMALIZATION_STD = (0.229, 0.224, 0.225)
# Loader worker processes (0 = load in the main process).
DEFAULTS.DATA.NUM_WORKERS = 4
# Images per training batch = 2 x identities x SAMPLE_ID_INSTANCE (both modalities of every identity).
DEFAULTS.DATA.TRAIN_BATCH_SIZE = 64
# K: images of each modality per identity in a training batch.
DEFAULTS.DATA.SAMPLE_ID_INSTANCE = 4
# CAJ's joint batch: each visible image of a step is loaded again as an independently augmented visible copy (rule CHANNEL_AUG_COPY, part 1 in the batch's part tensor); TRAIN_BATCH_SIZE keeps its meaning, so a step holds 1.5 x TRAIN_BATCH_SIZE images: visible, their copies in the same order, infrared.
DEFAULTS.DATA.VISIBLE_COPY = False
# MSCMNet's 2-view batch: each infrared image of a step is loaded again as an independently augmented infrared copy (rules CHANNEL_AUG_INFRARED_COPY, PIXEL_AUG_INFRARED_COPY; part 1); with VISIBLE_COPY a step holds 2 x TRAIN_BATCH_SIZE images: visible, their copies, infrared, their copies.
DEFAULTS.DATA.INFRARED_COPY = False
# Images per batch for feature extraction.
DEFAULTS.DATA.TEST_BATCH_SIZE = 128
# Decode and resize every image once into a memory-mapped uint8 store, reused by later epochs and runs.
DEFAULTS.DATA.CACHE = False
# Folder of the decoded-image store; empty = $VIREID_CACHE or ~/.cache/vireid.
DEFAULTS.DATA.CACHE_DIR = ""
# Open every image's header when the dataset is read (catches files that are not images); no = only check they exist.
DEFAULTS.DATA.VERIFY_IMAGES = True

DEFAULTS.MODEL = CN()
# Device: auto (CUDA when available), cpu, cuda or cuda:N.
DEFAULTS.MODEL.DEVICE = "auto"
# Backbone (a builder registered in modeling.backbone.BACKBONES; torchvision networks).
DEFAULTS.MODEL.NAME = "resnet50"
# Stride of the last backbone stage: 1 (larger feature map, the re-ID habit) or 2.
DEFAULTS.MODEL.LAST_STRIDE = 1
# Backbone weights: empty = random init, imagenet = torchvision's weights API, a path to a torchvision state dict, or a checkpoint of this project (imported published models too) for the whole network (its classifier only when the class count matches).
DEFAULTS.MODEL.PRETRAIN_PATH = "imagenet"
# Where the modality streams meet: 0 = one shared backbone, 1 = specific stem (AGW), 2..4 = specific through layer1..layer3.
DEFAULTS.MODEL.SHARED_FROM = 0
# Global pooling: avg or gem.
DEFAULTS.MODEL.POOLING = "avg"
# GeM: initial power p.
DEFAULTS.MODEL.GEM_P = 3.0
# GeM: learn p (yes) or keep it fixed (no).
DEFAULTS.MODEL.GEM_LEARNABLE = True
# Bias in the ID classifier (the BNNeck design uses none).
DEFAULTS.MODEL.FC_BIAS = False
# Width of the hidden layer of the modality-specific ID heads (used when LOSS.TERMS has modality_id or kl).
DEFAULTS.MODEL.HEAD_DIM = 512
# Standard deviation of the BNNeck weight's normal init around 1; 0 = all ones. AGW, CAJ and DEEN: 0.01.
DEFAULTS.MODEL.NECK_INIT_STD = 0.0
# Backbone stages used: 4 = stem..layer4; 3 = stop after layer3 (DEEN's RegDB network), the feature width is layer3's.
DEFAULTS.MODEL.LAST_STAGE = 4

DEFAULTS.LOSS = CN()
# Loss terms to train with (names registered in layers.criterion.LOSS_TERMS).
DEFAULTS.LOSS.TERMS = ("id", "triplet")
# Weight of the ID (cross-entropy) loss.
DEFAULTS.LOSS.ID_WEIGHT = 1.0
# Label smoothing epsilon of the ID losses; 0 = plain cross-entropy.
DEFAULTS.LOSS.LABEL_SMOOTH = 0.0
# Weight of the batch-hard triplet loss.
DEFAULTS.LOSS.TRIPLET_WEIGHT = 1.0
# Triplet margin.
DEFAULTS.LOSS.MARGIN = 0.3
# Distance of the triplet losses: euclidean or cosine.
DEFAULTS.LOSS.TRIPLET_DISTANCE = "euclidean"
# Triplet mining: all (whole batch) or cross (positives and negatives from the other modality only).
DEFAULTS.LOSS.TRIPLET_MINING = "all"
# Feature the metric losses (triplet, wrt, center) see: pool (pre-BN) or bn (post-BN).
DEFAULTS.LOSS.METRIC_FEAT = "pool"
# Weight of the center loss.
DEFAULTS.LOSS.CENTER_WEIGHT = 0.0005
# Update rate alpha of the class centres, by the center-loss paper's rule c -= alpha * sum(c - x) / (1 + n) (not the optimizer, not the schedule).
DEFAULTS.LOSS.CENTER_LR = 0.5
# Weight of the modality-specific ID heads' cross-entropy (each head on its own modality).
DEFAULTS.LOSS.MODALITY_ID_WEIGHT = 1.0
# Weight of the KL consistency between the two modality heads.
DEFAULTS.LOSS.KL_WEIGHT = 1.0

DEFAULTS.TRAIN = CN()
# Run folder: merged config, logs, metrics and checkpoints go here.
DEFAULTS.TRAIN.OUTPUT_PATH = "./output/run"
# Random seed (python, numpy, torch, sampler).
DEFAULTS.TRAIN.SEED = 2019
# Deterministic algorithms and no cudnn.benchmark (exact resume; slower on GPU).
DEFAULTS.TRAIN.DETERMINISTIC = False
# Optimizer (registered in solver.optimizer.OPTIMIZERS).
DEFAULTS.TRAIN.OPTIMIZER = "adam"
# Learning rate of the backbone.
DEFAULTS.TRAIN.BASE_LR = 0.00035
# Learning-rate multiple of the new layers (pooling, BNNeck, classifier) over BASE_LR.
DEFAULTS.TRAIN.NEW_LR_FACTOR = 1.0
# Learning rate of the modules a method inserts in the backbone (learning-rate group inserted: AGW's non-local blocks, DEEN's MFA and expansion): new (x NEW_LR_FACTOR) or backbone (AGW's, CAJ's and DEEN's code).
DEFAULTS.TRAIN.INSERTED_LR = "new"
# Learning-rate multiple of the modality-specific ID heads over BASE_LR.
DEFAULTS.TRAIN.HEAD_LR_FACTOR = 10.0
# SGD momentum (also Adam's beta1).
DEFAULTS.TRAIN.MOMENTUM = 0.9
# SGD: Nesterov momentum.
DEFAULTS.TRAIN.NESTEROV = True
# Weight decay of weights.
DEFAULTS.TRAIN.WEIGHT_DECAY = 0.0005
# Weight decay of biases, normalisation parameters and GeM's p; 0 = none.
DEFAULTS.TRAIN.WEIGHT_DECAY_BIAS = 0.0005
# Learning-rate schedule after the linear warmup (registered in solver.scheduler.SCHEDULERS).
DEFAULTS.TRAIN.SCHEDULER = "multistep"
# Multistep: epochs at which the learning rate is multiplied by GAMMA; empty = constant.
DEFAULTS.TRAIN.STEPS = (40, 70)
# Multistep: decay factor.
DEFAULTS.TRAIN.GAMMA = 0.1
# Epochs of linear warmup (stepped per iteration); 0 = none.
DEFAULTS.TRAIN.WARMUP_EPOCHS = 10
# Learning-rate factor at the start of the warmup.
DEFAULTS.TRAIN.WARMUP_FACTOR = 0.01
# Warmup in whole-epoch steps (WARMUP_FACTOR in epoch 1 up to 1 in the last warmup epoch, AGW/CAJ/DEEN's lr * (e + 1) / 10) instead of per iteration.
DEFAULTS.TRAIN.WARMUP_STEPWISE = False
# Cosine: final learning rate as a fraction of the initial one.
DEFAULTS.TRAIN.MIN_LR_FACTOR = 0.002
# Number of training epochs.
DEFAULTS.TRAIN.MAX_EPOCHS = 120
# Iterations per epoch; 0 = enough batches to cover the larger modality once.
DEFAULTS.TRAIN.ITERS_PER_EPOCH = 0
# Save last.pth every this many epochs (and always at the end).
DEFAULTS.TRAIN.CHECKPOINT_PERIOD = 10
# Evaluate every this many epochs: on the selection split (SELECT val/test), else for monitoring only (val ids when held out, else test); 0 = only at the end.
DEFAULTS.TRAIN.EVAL_PERIOD = 10
# Log a line every this many iterations when output is not a terminal (a tqdm bar otherwise), and write per-iteration TensorBoard scalars.
DEFAULTS.TRAIN.LOG_PERIOD = 50
# Model selection: last (final epoch), val (best epoch on the validation split: DATA.VAL_IDS) or test (best epoch on the test set; labelled as such).
DEFAULTS.TRAIN.SELECT = "last"
# Automatic mixed precision on CUDA (type: AMP_DTYPE); ignored on CPU.
DEFAULTS.TRAIN.AMP = True
# Mixed-precision type: auto (bf16 where the GPU computes it natively, else fp16), bf16, or fp16 (trained with a grad scaler).
DEFAULTS.TRAIN.AMP_DTYPE = "auto"
# channels_last memory format on CUDA; ignored on CPU.
DEFAULTS.TRAIN.CHANNELS_LAST = True
# Convert BatchNorm to SyncBatchNorm in multi-GPU runs; ignored on CPU and in single-process runs.
DEFAULTS.TRAIN.SYNC_BN = False

DEFAULTS.TEST = CN()
# Feature used for retrieval: bn (after the BNNeck), pool (before it) or pool+bn (both, concatenated; DEEN).
DEFAULTS.TEST.FEAT = "bn"
# Which embeddings of an expanded model (DEEN.BRANCHES) form the feature: all (concatenated, DEEN) or original.
DEFAULTS.TEST.VIEWS = "all"
# With FEAT pool+bn: weights of the pooled and the BN parts' inner products in the similarity (each part is scaled by the weight's square root after NORM_EACH). DEEN's code reports 1, 1 (distmat7) and also prints 0.1, 0.9 (distmat8).
DEFAULTS.TEST.PART_WEIGHTS = (1.0, 1.0)
# L2-normalise every part (each embedding's pool / bn vector, and the flipped image's) before they are added and concatenated (CAJ, DEEN).
DEFAULTS.TEST.NORM_EACH = False
# L2-normalise features before computing distances.
DEFAULTS.TEST.NORM = True
# Distance: sqeuclidean (squared Euclidean), euclidean, cosine (1 - cosine similarity), or dot (minus the inner product: DEEN ranks by the sum of its parts' inner products). Rankings by sqeuclidean and euclidean are the same; re-ranking and the distance pictures use the values.
DEFAULTS.TEST.DISTANCE = "sqeuclidean"
# Test-time augmentation: add the feature of each image's mirror to its own as CAJ's and DEEN's code do (rankings equal averaging's; raw and saved features are twice the mean).
DEFAULTS.TEST.FLIP = False
# k-reciprocal re-ranking of the distance matrix.
DEFAULTS.TEST.RERANK = False
# Re-ranking: k1.
DEFAULTS.TEST.RERANK_K1 = 20
# Re-ranking: k2.
DEFAULTS.TEST.RERANK_K2 = 6
# Re-ranking: weight of the original distance.
DEFAULTS.TEST.RERANK_LAMBDA = 0.3
# Number of gallery trials of datasets whose protocol samples its galleries (SYSU-MM01, LLCM).
DEFAULTS.TEST.NUM_TRIALS = 10
# Number of CMC ranks computed and reported.
DEFAULTS.TEST.MAX_RANK = 20
# Autocast (type: TRAIN.AMP_DTYPE) at feature extraction on CUDA; no = fp32 features, as AGW's, CAJ's and DEEN's code test (ignored on CPU).
DEFAULTS.TEST.AMP = False

DEFAULTS.TARGET = CN()
# Where the recipe's published figures come from (paper, table); empty = no published target.
DEFAULTS.TARGET.SOURCE = ""
# The headline setting the figures are for, as the results name it (e.g. all-search single-shot, visible-to-thermal, infrared-to-visible).
DEFAULTS.TARGET.SETTING = ""
# Published rank-1 accuracy in %; -1 = not published.
DEFAULTS.TARGET.R1 = -1.0
# Published mAP in %; -1 = not published.
DEFAULTS.TARGET.MAP = -1.0
# Published mINP in %; -1 = not published.
DEFAULTS.TARGET.MINP = -1.0
