from .run import (FORMATS, DataConfig, ModelConfig, RenderConfig, RunConfig, SourceConfig, config_docs,
                  dump_config, load_config)
from .schema import build, opt, section

__all__ = ["FORMATS", "DataConfig", "ModelConfig", "RenderConfig", "RunConfig", "SourceConfig", "build",
           "config_docs", "dump_config", "load_config", "opt", "section"]
