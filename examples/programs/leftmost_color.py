def execute_command(image) -> str:
    image_patch = ImagePatch(image)
    cars = image_patch.find("car")
    if not cars:
        return "N/A"
    cars.sort(key=lambda patch: patch.horizontal_center)
    return cars[0].query("What color is this car?")
