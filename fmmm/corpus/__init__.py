"""The built-in offline corpus: rendered image/video captions, synthesised audio captions, text.

`fmmm.corpus.build.build_corpus(CorpusConfig(), cache_dir)` writes webdataset tar and JSONL shards,
the same formats user data comes in. Heavy imports live in the submodules.
"""
