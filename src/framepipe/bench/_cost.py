"""What a decode costs: GPU seconds per second of video, and dollars per 1,000 hours of video.

    gpu_s_per_video_s = seconds_per_video / (frames_per_video / video_fps)
    usd_per_1000h     = gpu_s_per_video_s * 1000 * price_per_gpu_hour
    saving_usd_per_1000h(mode) = usd_per_1000h(baseline) - usd_per_1000h(mode)

Decoding 1,000 hours of video takes ``gpu_s_per_video_s`` x 1,000 GPU-hours. This assumes the GPU
is billed for the whole wall time of the decode, which is how a GPU-hour is priced.
"""

from __future__ import annotations

FORMULA = (
    "gpu_s_per_video_s = seconds_per_video / (frames_per_video / video_fps); "
    "usd_per_1000h = gpu_s_per_video_s * 1000 * price_per_gpu_hour; "
    "saving = usd_per_1000h(baseline) - usd_per_1000h(mode)"
)


def gpu_seconds_per_video_second(seconds_per_video: float, frames_per_video: int, video_fps: float) -> float:
    return seconds_per_video / (frames_per_video / video_fps)


def usd_per_1000_hours(gpu_s_per_video_s: float, price_per_gpu_hour: float) -> float:
    return gpu_s_per_video_s * 1000.0 * price_per_gpu_hour
