"""Stand-in for ``comfy.utils.ProgressBar``: records updates."""

updates = []


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total, self.current = total, 0

    def update_absolute(self, value, total=None, preview=None):
        self.current = value
        updates.append((value, total or self.total))

    def update(self, value):
        self.update_absolute(self.current + value)
