"""Shopping cart arithmetic, in integer cents so sums are exact."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Item:
    sku: str
    price_cents: int
    quantity: int = 1

    def total(self) -> int:
        if self.price_cents < 0 or self.quantity < 0:
            raise ValueError(f"{self.sku}: negative price or quantity")
        return self.price_cents * self.quantity


@dataclass
class Cart:
    items: list = field(default_factory=list)

    def add(self, item: Item) -> None:
        self.items.append(item)

    def subtotal(self) -> int:
        return sum(i.total() for i in self.items)

    def total(self, discount_percent: int = 0, tax_percent: int = 0) -> int:
        if not 0 <= discount_percent <= 100:
            raise ValueError("discount must be between 0 and 100")
        discounted = self.subtotal() * (100 - discount_percent) // 100
        return discounted + discounted * tax_percent // 100
