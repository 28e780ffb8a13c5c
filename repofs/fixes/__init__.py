"""The fixes of fixStorageRepository: one module per kind, each with its
FixKindSpec (fixes/context.py: stages, whether the image shows its progress,
`run`) and a docstring listing its durable steps."""

from repofs.fixes.clean import CLEAN
from repofs.fixes.context import FixKindSpec
from repofs.fixes.mend import MEND
from repofs.fixes.merge import MERGE
from repofs.fixes.optimize import OPTIMIZE
from repofs.model import FixKind

KINDS: dict[FixKind, FixKindSpec] = {
    FixKind.CLEAN: CLEAN,
    FixKind.OPTIMIZE: OPTIMIZE,
    FixKind.MEND: MEND,
    FixKind.MERGE: MERGE,
}
