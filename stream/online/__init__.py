"""Online learning on the stream: training-sample capture, the trainer agent, and model-updates.

One module per job: settings (OnlineSettings), capture (samples from scored events), versions
(the model-updates message protocol), follower (reading it), publisher (writing it), trainer
(learner rounds), wiring (attaching all of it to a worker's faust app and pipeline).

    workers ── batch hook ────────► training-samples (1 partition, key = user)
                                          │
                      trainer agent (exactly one owner: the consumer group of the 1 partition)
                      OnlineLearner.learn_many in an executor: test, promote?, train
                                          │ promoted versions
                                          ▼
    every worker ◄── follower thread ── model-updates (1 partition, compacted)
       pipeline.request_swap(...)  (between two micro-batches)

Each module's docstring tells its part (capture, trainer, versions, follower).
"""
