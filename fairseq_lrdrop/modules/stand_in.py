"""A stand-in for a module inside one fairseq module: how the plugin changes one name that a
fairseq module uses (its `torch.load`, its `tarfile.open`, numpy's `compat`) without changing
anything for the rest of the process."""
import types


class ModuleWith(types.ModuleType):
    """`module`, except for the attributes given: ModuleWith(torch, load=checked_load)."""

    def __init__(self, module: types.ModuleType, **replaced):
        super().__init__(module.__name__)
        self._module = module
        self.__dict__.update(replaced)

    def __getattr__(self, name):
        return getattr(self._module, name)
