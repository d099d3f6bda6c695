from .data import FORMATS, DataConfig, ModelConfig, RenderConfig, SourceConfig
from .evaluation import EvalConfig
from .run import LoggingConfig, RunConfig, config_docs, dump_config, load_config
from .schema import build, opt, section
from .training import MethodConfig, ReplayConfig, TrainConfig

__all__ = ["FORMATS", "DataConfig", "EvalConfig", "LoggingConfig", "MethodConfig", "ModelConfig", "RenderConfig",
           "ReplayConfig", "RunConfig", "SourceConfig", "TrainConfig", "build", "config_docs", "dump_config",
           "load_config", "opt", "section"]
