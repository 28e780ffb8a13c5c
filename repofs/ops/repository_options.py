"""The repository's default options, as xattrs of its directory:
user.repofs.autofix, .strategy, .participating, .image_hints (DESIGN.md)."""

from dataclasses import replace

from repofs import errors
from repofs.model import ImageKind, ImageRecord, ImageState, RepositoryOptions, Strategy
from repofs.names import check_name
from repofs.ops.logged import logged
from repofs.repository import Repository

PREFIX = "user.repofs."
# What the storage can do, probed at connect: read-only.
FACTS = (PREFIX + "reflink",)
NAMES = (
    *(PREFIX + n for n in ("autofix", "strategy", "participating", "image_hints", "max_chain")),
    *FACTS,
)


def render(options: RepositoryOptions) -> dict[str, str]:
    return {
        PREFIX + "autofix": "true" if options.autofix else "false",
        PREFIX + "strategy": str(options.strategy),
        PREFIX + "participating": ",".join(options.participating),
        PREFIX + "image_hints": ",".join(f"{i}={r}" for i, r in options.image_hints),
        PREFIX + "max_chain": str(options.max_chain),
    }


def _parse(options: RepositoryOptions, name: str, value: str) -> RepositoryOptions:
    key = name[len(PREFIX) :]
    if key == "autofix":
        if value not in ("true", "false"):
            raise errors.invalid(f"{name} is true or false, not {value!r}")
        return replace(options, autofix=value == "true")
    if key == "strategy":
        try:
            return replace(options, strategy=Strategy(value))
        except ValueError:
            raise errors.invalid(f"{name} is space or performance, not {value!r}") from None
    if key == "max_chain":
        if not value.isdigit() or not 1 <= int(value) <= 1000:
            raise errors.invalid(f"{name} is a number of volumes from 1 to 1000, not {value!r}")
        return replace(options, max_chain=int(value))
    items = [v.strip() for v in value.split(",") if v.strip()]
    if key == "participating":
        return replace(options, participating=tuple(check_name(i, "repoId") for i in items))
    hints = []
    for item in items:
        image_id, sep, repo = item.partition("=")
        if not sep:
            raise errors.invalid(f"{name} entries are ID=repo, not {item!r}")
        hints.append((check_name(image_id), check_name(repo, "repoId")))
    return replace(options, image_hints=tuple(hints))


def _check(name: str) -> None:
    if name not in NAMES:
        raise errors.not_supported(f"no repository attribute {name}: there are {', '.join(NAMES)}")
    if name in FACTS:
        raise errors.not_supported(f"{name} is read-only: what the storage can do")


async def get_options(repo: Repository) -> dict[str, str]:
    """The options, and the facts of FACTS."""
    options = render(await repo.read_options())
    return {**options, PREFIX + "reflink": "true" if repo.reflink else "false"}


@logged(image=None)
async def set_option(repo: Repository, name: str, value: bytes) -> None:
    """Durable steps: (1) one atomic write of the options file; (2) for a new
    max_chain, one record write per disk whose state it changes (a chain longer
    than the limit is degraded). A crash between leaves states of the old limit;
    the check offers the optimize of every chain longer than the new one."""
    _check(name)
    async with repo.options_changing:
        old = await repo.read_options()
        options = _parse(old, name, value.decode(errors="replace").strip())
        await repo.write_options(options)
        if options.max_chain != old.max_chain:
            for record in await _restate(repo, options):
                image = repo.open_images.get(record.id)
                if image is not None:
                    image.record = record


async def _restate(repo: Repository, options: RepositoryOptions) -> list[ImageRecord]:
    """Disks degraded by the length of their chain alone, or no longer: their
    state as `options.max_chain` says. Returns their records as written."""
    changed = []
    for record in await repo.list_images():
        if record.kind is not ImageKind.VIRTUAL_DISK or record.state is ImageState.BROKEN:
            continue
        too_long = len(record.chain) > options.max_chain
        # The other reasons to be degraded stay as they are.
        other = record.base_repository or (
            options.strategy is Strategy.PERFORMANCE and len(record.chain) > 1
        )
        state = ImageState.DEGRADED if too_long or other else ImageState.OPTIMIZED
        if state is not record.state:
            changed.append(await repo.change_image(record.id, lambda r, s=state: r.evolve(state=s)))
    return changed


async def reset_option(repo: Repository, name: str) -> None:
    """removexattr: back to the default (set_option logs it)."""
    _check(name)
    default = render(RepositoryOptions())[name]
    await set_option(repo, name, default.encode())
