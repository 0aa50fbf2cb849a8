"""bertlab: the helper package of the bertlab course, a map of it.

Each module holds one idea a notebook taught, so later notebooks import it instead of
copying it (as d2l's package does). Imports run one way: data and checkpoint, then the
model, then the training loop, then the task modules; ``artifacts`` and
``artifacts_pretraining`` join them to the course's data, and the ``cli`` serves the result.

==========================  ====  ==========================================================
module                      nb    what it holds
==========================  ====  ==========================================================
``args``                    all   argument checks with clear messages, shared by every module
``pretrained``              00    where the shipped checkpoint lives; loading it offline (tokenizer, config, tensors)
``data``                    00    the synthetic fab: failure reports, labels, the domain corpus
``env``                     00    environment check, seeding, the device (GPU when present)
``check``                   01    ``assert_close`` / ``assert_shape`` used by the graded tests
``model``                   01-02 BERT from scratch, with parameter names that load real checkpoints
``pretraining``             03    MLM masking (80/10/10), NSP pairs, the MLM loss, the collator
``pretrain_loop``           03    pre-training a tiny BERT and an MLM head through ``train.fit``; fill-mask
``batches``                 04    reports as token ids; dynamically padded, length-grouped batches
``outputs``                 04    what models return and the default loss of ``(outputs, batch)``
``evaluation``              04    a model's outputs over a dataset, its loss and metrics
``train``                   04    the one training loop: AdamW, warm-up, clipping, early stopping
``vocab``                   03-09 a domain WordPiece vocabulary; training only the rows a fab uses, trimming the rest
``cache``                   04    the model cache: keyed by configuration, written atomically
``plots``                   03-05 training curves (live while pre-training), confusion matrices, learning curves
``baselines``               05    TF-IDF + logistic regression, a BiLSTM, the label-budget harness
``frozen``                  05-07 frozen lower layers run once, a trainable top (with the [CLS] shortcut)
``multitask``               06    one encoder, one head per task, the masked weighted loss
``regression``              06    a regression head beside them: the severity score, its scale, MSE / Huber, MAE and rho
``domain``                  07    MLM perplexity, layer freezing, WordPiece fragmentation of domain words
``distill``                 08    the distillation loss, a student built from the teacher's layers
``deploy``                  09    INT8 quantization, ONNX export and Runtime, serving (``Predictor``)
``benchmark``               08-09 size on disk, latency percentiles, the benchmark table of every deployed variant
``tokens``                  10    BIO tags from character spans and back, entity F1; QA windows, span decoding, SQuAD EM/F1
``artifacts``               04-09 the course's shared, cached models (which notebook builds each)
``artifacts_pretraining``   03,07 the cached pre-trained ones: the checkpoint's MLM head, continued pre-training
``family``                  11    the BERT family: dynamic masking, SOP, ALBERT's count, ELECTRA's RTD, FLOPs per step
``debugging``               12    checks that find a broken fine-tune; gradient accumulation, mixed precision
``calibration``             13    a served model's temperature, abstention threshold and drift reference (saved beside it)
``monitoring``              13    what a served model reports: Prometheus metrics, the drift test on its confidence
``serve``                   13    ``bertlab serve``: the model over HTTP (FastAPI), micro-batched, calibrated, abstaining
``own_reports``             --    ``bertlab train``'s input: your own CSV/JSONL reports, checked, deduplicated, split
``own_model``               --    ``bertlab train``'s output: the course's fine-tune on them, a model card, HF's formats
``cli``                     09    ``bertlab predict`` / ``bertlab export`` / ``bertlab serve`` / ``bertlab train``
``instructor``              --    nbgrader tooling for instructors (release, run, grade); not course content
==========================  ====  ==========================================================
"""
__version__ = "0.1.0"
