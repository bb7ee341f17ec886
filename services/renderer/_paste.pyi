# The compiled paste-back pass (_paste.c); services/renderer/paste_kernel.py is its Python face. The C side takes
# any C-contiguous buffer and checks its size; the project passes numpy arrays.
import numpy as np

def paste_box(render: np.ndarray, mask: np.ndarray, ones: np.ndarray, row_x: np.ndarray, row_y: np.ndarray,
              col_x: np.ndarray, col_y: np.ndarray, weights: np.ndarray, frame: np.ndarray,
              render_hw: tuple[int, int], frame_shape: tuple[int, ...], box: tuple[int, int, int, int],
              mode: int) -> None: ...
