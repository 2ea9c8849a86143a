"""Video data: decoding, clip sampling, transforms, dataset readers and the synthetic benchmark.

Everything here but the synthetic generator's optional parts is torch-free (the runtime side).
"""
