"""The batching modes that run an `Engine`'s requests, one module each, behind `base.Batcher`."""
