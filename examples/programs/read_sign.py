def execute_command(image) -> str:
    image_patch = ImagePatch(image)
    circles = image_patch.find("circle")
    if not circles:
        return "no sign"
    text = circles[0].read_text()
    if not text:
        return "no sign"
    return text
