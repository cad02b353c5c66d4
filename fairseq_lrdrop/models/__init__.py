from .layer_states_model import LayerStatesModelMixin  # noqa: F401
from .lr_drop_bart import LRDropBARTModel  # noqa: F401
from .lr_drop_roberta import LRDropRobertaModel  # noqa: F401
from .lr_drop_transformer import LRDropTransformerModel  # noqa: F401
from .lr_drop_transformer_lm import LRDropTransformerLanguageModel  # noqa: F401
