from .run import (FORMATS, DataConfig, LoggingConfig, MethodConfig, ModelConfig, RenderConfig, RunConfig,
                  SourceConfig, TrainConfig, config_docs, dump_config, load_config)
from .schema import build, opt, section

__all__ = ["FORMATS", "DataConfig", "LoggingConfig", "MethodConfig", "TrainConfig", "ModelConfig", "RenderConfig", "RunConfig", "SourceConfig", "build",
           "config_docs", "dump_config", "load_config", "opt", "section"]
