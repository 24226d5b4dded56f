"""ModelCache policy with a fake loader: LRU in RAM, one model on the accelerator, failures change nothing."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sdweb.engine.models.cache import ModelCache
from sdweb.engine.models.registry import CheckpointInfo


def checkpoint(name: str, *, size: int = 100, mtime: float = 1.0) -> CheckpointInfo:
    return CheckpointInfo(
        path=Path("/models") / name,
        name=name,
        model_name=name.rsplit(".", 1)[0],
        kind="safetensors",
        size=size,
        mtime=mtime,
        family="sd1",
    )


@dataclass
class FakeModel:
    info: CheckpointInfo
    vae: str | None
    device: str
    dtype: str = "float32"
    pipe: object = field(default_factory=object)
    moves: list[str] = field(default_factory=list)

    def to(self, device: Any) -> FakeModel:
        self.moves.append(str(device))
        self.device = str(device)
        return self

    def nbytes(self) -> int:
        return self.info.size


class FakeLoader:
    def __init__(self, device: str = "cuda", delay: float = 0.0) -> None:
        self.device = device
        self.delay = delay
        self.calls: list[tuple[str, str | None]] = []
        self.fail: set[str] = set()
        self.active_loads = 0
        self.max_concurrent_loads = 0
        self._lock = threading.Lock()

    def check(self, info: CheckpointInfo, vae: str | None) -> None:
        """The loader's cheap precheck: refuses the files it would fail to load."""
        if info.name in self.fail:
            raise ValueError(f"{info.name}: not a Stable Diffusion checkpoint")

    def __call__(self, info: CheckpointInfo, vae: str | None) -> FakeModel:
        with self._lock:
            self.active_loads += 1
            self.max_concurrent_loads = max(self.max_concurrent_loads, self.active_loads)
        try:
            self.calls.append((info.name, vae))
            if self.delay:
                time.sleep(self.delay)
            if info.name in self.fail:
                raise ValueError(f"{info.name}: not a Stable Diffusion checkpoint")
            return FakeModel(info=info, vae=vae, device=self.device)
        finally:
            with self._lock:
                self.active_loads -= 1


A, B, C = checkpoint("a.safetensors"), checkpoint("b.safetensors"), checkpoint("c.safetensors")


def test_reuse_does_not_reload() -> None:
    loader = FakeLoader()
    cache = ModelCache(loader)

    with cache.use(A) as first:
        pass
    started = time.perf_counter()
    with cache.use(A) as second:
        pass

    assert second is first
    assert loader.calls == [("a.safetensors", None)]
    assert time.perf_counter() - started < 0.1
    assert cache.current is first


def test_capacity_one_keeps_only_the_last_model() -> None:
    loader = FakeLoader()
    evicted: list[str] = []
    cache = ModelCache(loader, capacity=1, on_evict=lambda model: evicted.append(model.info.name))

    with cache.use(A):
        pass
    with cache.use(B) as b:
        pass

    assert cache.loaded() == ["b.safetensors"]
    assert evicted == ["a.safetensors"]
    assert cache.current is b
    with cache.use(A):
        pass
    assert [name for name, _ in loader.calls] == ["a.safetensors", "b.safetensors", "a.safetensors"]


def test_capacity_two_evicts_the_least_recently_used() -> None:
    loader = FakeLoader()
    cache = ModelCache(loader, capacity=2)

    for info in (A, B, A, C):  # A was used after B, so B is the least recently used when C arrives
        with cache.use(info):
            pass

    assert cache.loaded() == ["c.safetensors", "a.safetensors"]
    assert [name for name, _ in loader.calls] == ["a.safetensors", "b.safetensors", "c.safetensors"]


def test_only_the_model_in_use_is_on_the_accelerator() -> None:
    loader = FakeLoader(device="cuda:0")
    cache = ModelCache(loader, capacity=2, offload_device="cpu")

    with cache.use(A) as a:
        assert a.device == "cuda:0"
    with cache.use(B) as b:
        assert (a.device, b.device) == ("cpu", "cuda:0")
    with cache.use(A):
        assert (a.device, b.device) == ("cuda:0", "cpu")

    assert a.moves == ["cpu", "cuda:0"]


def test_nothing_moves_on_a_cpu_only_machine() -> None:
    loader = FakeLoader(device="cpu")
    cache = ModelCache(loader, capacity=2, offload_device="cpu")

    with cache.use(A) as a, cache.use(A):
        pass
    with cache.use(B) as b:
        pass
    with cache.use(A):
        pass

    assert a.moves == [] and b.moves == []


def test_offload_device_none_never_moves_models() -> None:
    loader = FakeLoader(device="cuda")
    cache = ModelCache(loader, capacity=2, offload_device=None)

    with cache.use(A) as a:
        pass
    with cache.use(B):
        pass

    assert a.moves == []


def test_failed_load_keeps_the_previous_model_loaded_and_usable() -> None:
    loader = FakeLoader(device="cuda")
    loader.fail.add("broken.safetensors")
    cache = ModelCache(loader, capacity=1, precheck=loader.check)
    with cache.use(A) as a:
        pass

    with pytest.raises(ValueError, match="broken.safetensors"):
        with cache.use(checkpoint("broken.safetensors")):
            pytest.fail("the body must not run when loading failed")

    assert cache.loaded() == ["a.safetensors"]
    assert cache.current is a
    assert a.device == "cuda" and a.moves == []  # the check failed before anything moved
    with cache.use(A) as again:
        assert again is a
    assert [name for name, _ in loader.calls] == ["a.safetensors"]  # the broken file was never loaded


def test_a_model_taking_the_current_ones_place_is_not_parked_first_and_its_memory_goes_back() -> None:
    """Capacity 1: the current model is unloaded (its memory handed back) before the next one loads,
    rather than copied from the accelerator to RAM only to be dropped right after."""
    events: list[str] = []
    loader = FakeLoader(device="cuda")
    cache = ModelCache(loader, capacity=1, offload_device="cpu",
                       on_evict=lambda model: events.append(f"evict {model.info.name}"),
                       on_released=lambda: events.append("released"))
    with cache.use(A) as a:
        pass

    real_call = loader.__call__
    loader_calls: list[str] = []

    def loading(info: CheckpointInfo, vae: str | None) -> FakeModel:
        loader_calls.append(info.name)
        events.append(f"load {info.name}")
        return real_call(info, vae)

    cache._loader = loading
    with cache.use(B) as b:
        pass

    assert a.moves == []  # never parked on the CPU
    assert events == ["evict a.safetensors", "released", "load b.safetensors"]
    assert cache.loaded() == ["b.safetensors"] and cache.current is b


def test_a_load_failing_after_the_check_leaves_no_model_and_the_next_use_loads_again() -> None:
    loader = FakeLoader(device="cuda")
    cache = ModelCache(loader, capacity=1, precheck=lambda info, vae: None)  # the check cannot see it
    with cache.use(A):
        pass
    loader.fail.add("b.safetensors")

    with pytest.raises(ValueError, match="b.safetensors"):
        with cache.use(B):
            pass

    assert cache.loaded() == [] and cache.current is None
    with cache.use(A) as again:
        assert again.device == "cuda"
    assert [name for name, _ in loader.calls] == ["a.safetensors", "b.safetensors", "a.safetensors"]


def test_capacity_two_still_parks_the_previous_model_for_a_quick_switch_back() -> None:
    released: list[str] = []
    loader = FakeLoader(device="cuda")
    cache = ModelCache(loader, capacity=2, offload_device="cpu", on_released=lambda: released.append("x"))
    with cache.use(A) as a:
        pass
    with cache.use(B):
        pass
    assert a.moves == ["cpu"] and released == []


def test_vae_choice_is_part_of_the_identity() -> None:
    loader = FakeLoader()
    cache = ModelCache(loader, capacity=2)

    with cache.use(A) as own:
        pass
    with cache.use(A, vae=Path("/models/VAE/mse.safetensors")) as other:
        pass

    assert other is not own
    assert other.vae == "/models/VAE/mse.safetensors"
    assert loader.calls[1] == ("a.safetensors", "/models/VAE/mse.safetensors")


def test_a_replaced_file_is_loaded_again() -> None:
    loader = FakeLoader()
    cache = ModelCache(loader, capacity=2)

    with cache.use(A):
        pass
    with cache.use(checkpoint("a.safetensors", mtime=2.0)):
        pass

    assert len(loader.calls) == 2


def test_unload_all_and_set_capacity() -> None:
    evicted: list[str] = []
    cache = ModelCache(FakeLoader(), capacity=3, on_evict=lambda model: evicted.append(model.info.name))
    for info in (A, B, C):
        with cache.use(info):
            pass

    cache.set_capacity(1)
    assert cache.loaded() == ["c.safetensors"]
    assert evicted == ["a.safetensors", "b.safetensors"]

    cache.unload_all()
    assert cache.loaded() == [] and cache.current is None
    with pytest.raises(ValueError, match="at least one"):
        cache.set_capacity(0)


def test_nested_use_of_another_model_is_refused() -> None:
    cache = ModelCache(FakeLoader(), capacity=2)

    with cache.use(A):
        with pytest.raises(RuntimeError, match="still using another model"):
            with cache.use(B):
                pass


def test_concurrent_requests_are_serialized_and_each_model_loads_once() -> None:
    loader = FakeLoader(device="cuda", delay=0.02)
    cache = ModelCache(loader, capacity=2)
    errors: list[BaseException] = []
    inside = 0
    max_inside = 0
    lock = threading.Lock()

    def worker(info: CheckpointInfo) -> None:
        nonlocal inside, max_inside
        try:
            for _ in range(5):
                with cache.use(info) as model:
                    with lock:
                        inside += 1
                        max_inside = max(max_inside, inside)
                    assert model.info == info and model.device == "cuda"
                    time.sleep(0.001)
                    with lock:
                        inside -= 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(info,)) for info in (A, B, A, B)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert errors == []
    assert max_inside == 1
    assert loader.max_concurrent_loads == 1
    assert sorted(name for name, _ in loader.calls) == ["a.safetensors", "b.safetensors"]


def test_queries_do_not_wait_for_a_model_in_use() -> None:
    cache = ModelCache(FakeLoader())
    entered, release = threading.Event(), threading.Event()

    def generate() -> None:
        with cache.use(A):
            entered.set()
            release.wait(5)

    thread = threading.Thread(target=generate)
    thread.start()
    assert entered.wait(5)
    started = time.perf_counter()
    assert cache.loaded() == ["a.safetensors"]
    assert cache.current is not None
    assert time.perf_counter() - started < 0.5
    release.set()
    thread.join(5)


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least one"):
        ModelCache(FakeLoader(), capacity=0)


# -- with the real loader and tiny checkpoints -----------------------------------------------------


def test_real_loader_switch_back_is_instant_and_a_bad_file_keeps_the_model(
    tmp_path: Path, tiny_sd1_path: Path, tiny_sd2v_path: Path
) -> None:
    import torch

    from sdweb.engine.devices import RuntimeConfig
    from sdweb.engine.models.hashes import HashCache
    from sdweb.engine.models.loader import load_checkpoint
    from sdweb.engine.models.registry import CheckpointRegistry

    root = tmp_path / "ckpts"
    root.mkdir()
    for source in (tiny_sd1_path, tiny_sd2v_path):
        (root / source.name).symlink_to(source)
    (root / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    registry = CheckpointRegistry([root], HashCache(tmp_path / "cache"))
    runtime = RuntimeConfig(
        device=torch.device("cpu"),
        dtype=torch.float32,
        vae_dtype=torch.float32,
        attention="sdpa",
        offload="none",
        vae_tiling=False,
        threads=1,
    )
    cache = ModelCache(
        lambda info, vae: load_checkpoint(info, runtime, vae_path=vae),
        capacity=2,
        offload_device=runtime.parking_device,
    )
    sd1, sd2 = registry.find("tiny-sd1"), registry.find("tiny-sd2v")

    with cache.use(sd1) as first:
        assert first.family == "sd1"
    with cache.use(sd2) as second:
        assert second.family == "sd2-v"
    started = time.perf_counter()
    with cache.use(sd1) as again:
        switch = time.perf_counter() - started
    assert again is first
    assert switch < 1.0

    with pytest.raises(Exception, match="broken.safetensors"):
        with cache.use(registry.find("broken")):
            pass
    assert cache.current is first
    assert cache.loaded() == ["tiny-sd1.safetensors", "tiny-sd2v.safetensors"]
